// The ring of a stream (docs/PROTOCOL.md §12.2, §12.3): its header page, record headers, where a
// record goes, the wake-up protocol, and the helpers the producer and the consumer share.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include <sys/eventfd.h>
#include <unistd.h>

#include <arrow/io/memory.h>

#include "bytes.hpp"
#include "internal.hpp"

namespace arrow_shm {

namespace {

constexpr char kRingMagic[8] = {'A', 'S', 'H', 'M', 'R', 'I', 'N', 'G'};

void eventfd_signal(int fd) {
  const uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
  // EAGAIN: the counter is saturated, so the waiter wakes anyway.
}

}  // namespace

void check_ring_capacity(uint64_t capacity) {
  if (capacity < kMinRingCapacity || capacity > kMaxRingCapacity || (capacity & (capacity - 1)))
    throw Error("ERR_INVALID_ARGUMENT", "ring capacity must be a power of two from 65536 to 2^40 bytes, got " +
                                            std::to_string(capacity));
}

RecordPlacement place_record(uint64_t write, uint64_t length, uint64_t capacity) {
  const uint64_t offset = ring_offset(write, capacity);
  const uint64_t tail = capacity - offset;
  if (length <= tail) return {offset, 0};
  return {0, tail};
}

RecordHeader RecordHeader::read(const uint8_t* record) {
  return {load<uint32_t>(record + length_at), load<uint32_t>(record + kind_at), load<uint64_t>(record + sequence_at),
          load<uint64_t>(record + ipc_length_at)};
}

void RecordHeader::write(uint8_t* record) const {
  uint8_t header[kRecordHeaderBytes] = {};
  store(header + length_at, length);
  store(header + kind_at, kind);
  store(header + sequence_at, sequence);
  store(header + ipc_length_at, ipc_length);
  std::memcpy(record, header, sizeof header);
}

void RingHeader::init(uint64_t capacity, uint32_t max_readers) const {
  std::memcpy(page_ + RingField::magic, kRingMagic, sizeof kRingMagic);
  store(page_ + RingField::layout_version, kRingLayoutVersion);
  store(page_ + RingField::header_length, static_cast<uint32_t>(kRingHeaderBytes));
  store(page_ + RingField::capacity, capacity);
  store(page_ + RingField::max_readers, max_readers);
}

void RingHeader::check(uint64_t capacity, uint64_t slot) const {
  using detail::ring_invalid;
  if (std::memcmp(page_ + RingField::magic, kRingMagic, sizeof kRingMagic) != 0)
    throw ring_invalid("ring header without the ASHMRING magic");
  const auto layout = load<uint32_t>(page_ + RingField::layout_version);
  if (layout != kRingLayoutVersion)
    throw ring_invalid("ring layout version " + std::to_string(layout) + ", this side reads " +
                       std::to_string(kRingLayoutVersion));
  const auto header_length = load<uint32_t>(page_ + RingField::header_length);
  if (header_length != kRingHeaderBytes)
    throw ring_invalid("ring header length " + std::to_string(header_length) + ", expected " +
                       std::to_string(kRingHeaderBytes));
  const auto declared = load<uint64_t>(page_ + RingField::capacity);
  if (declared != capacity)
    throw ring_invalid("ring header says capacity " + std::to_string(declared) + ", STREAM_OPEN says " +
                       std::to_string(capacity));
  const auto max_readers = load<uint32_t>(page_ + RingField::max_readers);
  if (max_readers < 1 || max_readers > kMaxRingReaders || slot >= max_readers)
    throw ring_invalid("reader slot " + std::to_string(slot) + " outside the ring's " + std::to_string(max_readers) +
                       " slots");
}

void wake_if_waiting(std::atomic_ref<uint32_t> flag, int eventfd) {
  // A plain (seq_cst) load first: the common case, nobody waiting, costs no locked instruction.
  uint32_t expected = 1;
  if (flag.load(std::memory_order_seq_cst) == 1 && flag.compare_exchange_strong(expected, 0, std::memory_order_seq_cst))
    eventfd_signal(eventfd);
}

namespace detail {

bool is_open_key(const std::string& key) {
  return std::any_of(std::begin(kOpenKeys), std::end(kOpenKeys), [&](const char* k) { return key == k; });
}

Error ring_invalid(const std::string& m) { return Error(kErrRingInvalid, m); }

int sleep_ms(const Deadline& d) {
  if (!d) return kSleepBoundMs;
  return std::min(poll_timeout_ms(d), kSleepBoundMs);
}

Fd make_eventfd() {
  Fd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) throw_errno("eventfd", errno);
  return fd;
}

void eventfd_drain(int fd) {
  uint64_t value;
  ssize_t r;
  do {
    r = ::read(fd, &value, sizeof value);
  } while (r < 0 && errno == EINTR);
}

void check_eventfd(int fd, const char* what) {
  char path[64], target[128];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(path, target, sizeof target - 1);
  const std::string link = n > 0 ? std::string(target, static_cast<size_t>(n)) : "unknown";
  if (link != "anon_inode:[eventfd]")
    throw Error("ERR_SEGMENT_INVALID", std::string("the ") + what + " fd is not an eventfd (" + link + ")");
}

void make_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0 && !(flags & O_NONBLOCK)) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

bool sleep_on(std::atomic_ref<uint32_t> flag, int eventfd, const std::vector<int>& sockets,
              const std::function<bool()>& ready, const Deadline& d) {
  flag.store(1, std::memory_order_seq_cst);
  if (ready()) {
    flag.store(0, std::memory_order_seq_cst);
    return false;
  }
  std::vector<pollfd> fds{{eventfd, POLLIN, 0}};
  for (int s : sockets) fds.push_back({s, POLLIN, 0});
  int r;
  do {
    r = ::poll(fds.data(), fds.size(), sleep_ms(d));
  } while (r < 0 && errno == EINTR);
  const int err = errno;
  if (r > 0 && (fds[0].revents & POLLIN)) eventfd_drain(eventfd);
  flag.store(0, std::memory_order_seq_cst);
  if (r < 0) throw_errno("poll", err);
  return r > 0 && std::any_of(fds.begin() + 1, fds.end(), [](const pollfd& p) { return p.revents != 0; });
}

uint64_t decimal(const Frame& f, const std::string& key, const char* frame_name) {
  const std::string text = f.get(key).value_or("");
  if (text.empty() || text.size() > 16 || text.find_first_not_of("0123456789") != std::string::npos)
    throw Error("ERR_PROTOCOL", std::string(frame_name) + " without a valid " + key + " (\"" + text.substr(0, 32) + "\")");
  return std::stoull(text);
}

std::vector<Span> read_messages(const std::shared_ptr<arrow::Buffer>& bytes, bool eos_ends, IpcChecker* checker) {
  using arrow::ipc::MessageType;
  if (checker) checker->check_messages(bytes->data(), static_cast<uint64_t>(bytes->size()));
  arrow::io::BufferReader in(bytes);
  std::vector<Span> out;
  for (;;) {
    const int64_t start = unwrap(in.Tell());
    if (start >= bytes->size()) break;
    auto message = unwrap(arrow::ipc::ReadMessage(&in));
    if (!message) {
      if (eos_ends) break;
      throw Error("ERR_IPC_INVALID", "an end-of-stream marker inside a stream record");
    }
    const MessageType type = message->type();
    if (type != MessageType::SCHEMA && type != MessageType::DICTIONARY_BATCH && type != MessageType::RECORD_BATCH)
      throw Error("ERR_IPC_INVALID", "unexpected " + arrow::ipc::FormatMessageType(type) + " message in a stream");
    out.push_back({std::move(message), start, unwrap(in.Tell())});
  }
  return out;
}

}  // namespace detail

}  // namespace arrow_shm
