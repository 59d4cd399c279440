// Streams (docs/PROTOCOL.md §12): the ring, the consumer, the producer, publish/subscribe.
#include "arrow_shm/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arrow/io/interfaces.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/message.h>
#include <arrow/ipc/reader.h>
#include <arrow/ipc/writer.h>
#include <arrow/type.h>

#include "ipc_internal.hpp"

namespace arrow_shm {

namespace {

constexpr char kRingMagic[8] = {'A', 'S', 'H', 'M', 'R', 'I', 'N', 'G'};
constexpr int kRingSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
// Longest single sleep: a wake-up lost to a peer without atomics (Python) costs latency only.
constexpr int kSleepBoundMs = 50;
// How often a producer that never sleeps looks at its readers' sockets for a hang-up.
constexpr auto kSocketCheckInterval = std::chrono::milliseconds(10);
// Larger records travel in their own segment: a quarter of the ring (§12.2), and never more
// than a u32 record_length can describe (a PADDING record is shorter than the record after it).
constexpr uint64_t kMaxRecordBytes = 1ull << 31;
// A joiner's prologue is checked like a TABLE segment, with this size limit (as Node and Python).
constexpr uint64_t kMaxPrologueBytes = 1ull << 30;
const char* const kOpenKeys[] = {"stream_id", "reader_slot", "start_position", "capacity"};

uint64_t align64(uint64_t n) { return (n + 63) / 64 * 64; }

template <typename T>
T unwrap(arrow::Result<T> r) {
  if (!r.ok()) throw ipc_error(r.status());
  return std::move(r).ValueOrDie();
}

void check(const arrow::Status& st) {
  if (!st.ok()) throw ipc_error(st);
}

Error ring_invalid(const std::string& m) { return Error(kErrRingInvalid, m); }

Deadline deadline_of(Timeout t) {
  if (!t) return std::nullopt;
  return Clock::now() + *t;
}

int sleep_ms(const Deadline& d) {
  if (!d) return kSleepBoundMs;
  return std::min(poll_timeout_ms(d), kSleepBoundMs);
}

Error remote_error(const Frame& f, const char* fallback) {
  return Error(f.get("code").value_or("ERR_REMOTE"), f.get("message").value_or(fallback));
}

Fd make_eventfd() {
  Fd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) throw_errno("eventfd", errno);
  return fd;
}

void eventfd_signal(int fd) {
  const uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
  // EAGAIN: the counter is saturated, so the waiter wakes anyway.
}

void eventfd_drain(int fd) {
  uint64_t value;
  ssize_t r;
  do {
    r = ::read(fd, &value, sizeof value);
  } while (r < 0 && errno == EINTR);
}

void poll_all(std::vector<pollfd>& fds, int timeout_ms) {
  for (auto& p : fds) p.revents = 0;
  int r;
  do {
    r = ::poll(fds.data(), fds.size(), timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r < 0) throw_errno("poll", errno);
}

uint64_t decimal(const Frame& f, const std::string& key, const char* frame_name) {
  const std::string text = f.get(key).value_or("");
  if (text.empty() || text.size() > 16 || text.find_first_not_of("0123456789") != std::string::npos)
    throw Error("ERR_PROTOCOL", std::string(frame_name) + " without a valid " + key + " (\"" + text.substr(0, 32) + "\")");
  return std::stoull(text);
}

void check_eventfd(int fd, const char* what) {
  char path[64], target[128];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(path, target, sizeof target - 1);
  const std::string link = n > 0 ? std::string(target, static_cast<size_t>(n)) : "unknown";
  if (link != "anon_inode:[eventfd]")
    throw Error("ERR_SEGMENT_INVALID", std::string("the ") + what + " fd is not an eventfd (" + link + ")");
}

// A received eventfd we write: never block on it, even if the peer made it blocking.
void make_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0 && !(flags & O_NONBLOCK)) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

using IpcMessage = arrow::ipc::Message;
using arrow::ipc::MessageType;

// One encapsulated message of a byte range and where it lies in it.
struct Span {
  std::unique_ptr<IpcMessage> message;
  int64_t start, end;
};

// Walks the encapsulated messages of `bytes` (§7) without copying: each body is a slice of
// `bytes`. Stops at an end-of-stream marker if `eos_ends`, else refuses it.
std::vector<Span> read_messages(const std::shared_ptr<arrow::Buffer>& bytes, bool eos_ends) {
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

// A dictionary outlives the record it came in (later batches use it): copied out of the ring.
std::unique_ptr<IpcMessage> copy_message(const IpcMessage& m) {
  auto metadata = unwrap(m.metadata()->CopySlice(0, m.metadata()->size()));
  std::shared_ptr<arrow::Buffer> body;
  if (m.body()) body = unwrap(m.body()->CopySlice(0, m.body()->size()));
  return unwrap(IpcMessage::Open(metadata, body));
}

bool has_dictionaries(const arrow::DataType& type) {
  if (type.id() == arrow::Type::DICTIONARY) return true;
  for (auto& f : type.fields())
    if (has_dictionaries(*f->type())) return true;
  return false;
}

}  // namespace

void check_ring_capacity(uint64_t capacity) {
  if (capacity < kMinRingCapacity || capacity > kMaxRingCapacity || (capacity & (capacity - 1)))
    throw Error("ERR_INVALID_ARGUMENT", "ring capacity must be a power of two from 65536 to 2^40 bytes, got " +
                                            std::to_string(capacity));
}

void wake_if_waiting(std::atomic_ref<uint32_t> flag, int eventfd) {
  uint32_t expected = 1;
  if (flag.compare_exchange_strong(expected, 0, std::memory_order_seq_cst)) eventfd_signal(eventfd);
}

namespace detail {

// The Arrow stream reader pulls messages from here: the prologue's, then each record's.
class QueueMessageReader : public arrow::ipc::MessageReader {
 public:
  void push(std::unique_ptr<IpcMessage> m) { queue_.push_back(std::move(m)); }
  bool empty() const { return queue_.empty(); }
  void clear() { queue_.clear(); }
  arrow::Result<std::unique_ptr<IpcMessage>> ReadNextMessage() override {
    if (queue_.empty()) return std::unique_ptr<IpcMessage>();  // end of what arrived so far
    auto m = std::move(queue_.front());
    queue_.pop_front();
    return m;
  }

 private:
  std::deque<std::unique_ptr<IpcMessage>> queue_;
};

// In-order release (§12.3): read_position advances over the leading run of released records.
struct ReleaseQueue {
  RingHeader header;
  uint32_t slot;
  int space_event;
  uint64_t read_position;
  std::deque<std::pair<uint64_t, bool>> held;  // (end position, released)
  uint64_t first_ticket = 0;

  uint64_t hold(uint64_t end) {
    held.emplace_back(end, false);
    return first_ticket + held.size() - 1;
  }
  void release(uint64_t ticket) {
    if (ticket < first_ticket || ticket - first_ticket >= held.size()) return;
    held[ticket - first_ticket].second = true;
    bool advanced = false;
    while (!held.empty() && held.front().second) {
      read_position = held.front().first;
      held.pop_front();
      first_ticket++;
      advanced = true;
    }
    if (!advanced) return;
    header.read_position(slot).store(read_position, std::memory_order_seq_cst);
    wake_if_waiting(header.producer_waiting(), space_event);
  }
};

// The sink of Arrow's stream writer: collects the messages of each WriteRecordBatch. Tell()
// counts from the last take(): the writer aligns messages to it, and each record's payload
// starts 64-byte aligned in the ring.
class CaptureStream : public arrow::io::OutputStream {
 public:
  arrow::Status Close() override {
    closed_ = true;
    return arrow::Status::OK();
  }
  bool closed() const override { return closed_; }
  arrow::Result<int64_t> Tell() const override { return static_cast<int64_t>(bytes_.size()); }
  arrow::Status Write(const void* data, int64_t nbytes) override {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes_.insert(bytes_.end(), p, p + nbytes);
    return arrow::Status::OK();
  }
  std::vector<uint8_t> take() { return std::exchange(bytes_, {}); }

 private:
  std::vector<uint8_t> bytes_;
  bool closed_ = false;
};

}  // namespace detail

StreamBatch& StreamBatch::operator=(StreamBatch&& o) noexcept {
  if (this != &o) {
    release();
    batch = std::move(o.batch);
    sequence = o.sequence;
    data = std::move(o.data);
    queue_ = std::move(o.queue_);
    ticket_ = o.ticket_;
    o.queue_.reset();
  }
  return *this;
}

void StreamBatch::release() {
  if (auto queue = queue_.lock()) queue->release(ticket_);
  queue_.reset();
}

// ---------------------------------------------------------------------------------------------
// Consumer

StreamReader::StreamReader(Channel& channel, const Frame& frame, std::vector<Fd> fds, StreamReaderOptions options)
    : channel_(&channel), options_(options) {
  if (fds.size() != 4 || frame.fd_count != 4)
    throw Error("ERR_PROTOCOL", "STREAM_OPEN must carry exactly 4 fds, got " + std::to_string(fds.size()) +
                                    " (fd_count " + std::to_string(frame.fd_count) + ")");
  stream_id_ = decimal(frame, "stream_id", "STREAM_OPEN");
  const uint64_t slot = decimal(frame, "reader_slot", "STREAM_OPEN");
  const uint64_t start = decimal(frame, "start_position", "STREAM_OPEN");
  capacity_ = decimal(frame, "capacity", "STREAM_OPEN");
  for (auto& [k, v] : frame.metadata)
    if (std::none_of(std::begin(kOpenKeys), std::end(kOpenKeys), [&](const char* key) { return k == key; }))
      metadata_.emplace_back(k, v);
  try {
    check_ring_capacity(capacity_);
  } catch (const Error& e) {
    throw ring_invalid(e.what());
  }
  check_eventfd(fds[2].get(), "data");
  check_eventfd(fds[3].get(), "space");

  // The ring (§12.2): a memfd with the ring seals and exactly 4096 + capacity bytes.
  const int ring = fds[0].get();
  struct stat st {};
  if (::fstat(ring, &st) != 0) throw_errno("fstat", errno);
  if (!S_ISREG(st.st_mode)) throw Error("ERR_SEGMENT_INVALID", "the ring fd is not a regular file (not a memfd)");
  const int seals = ::fcntl(ring, F_GET_SEALS);
  if (seals < 0) {
    if (errno == EINVAL) throw Error("ERR_SEGMENT_INVALID", "the ring fd is not a memfd (F_GET_SEALS: EINVAL)");
    throw_errno("fcntl(F_GET_SEALS)", errno);
  }
  if ((seals & kRingSeals) != kRingSeals) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "ring seals 0x%x lack the required 0x%x", seals, kRingSeals & ~seals);
    throw Error("ERR_SEGMENT_UNSEALED", buf);
  }
  if (static_cast<uint64_t>(st.st_size) != kRingHeaderBytes + capacity_)
    throw ring_invalid("ring segment of " + std::to_string(st.st_size) + " bytes, expected 4096 + " +
                       std::to_string(capacity_));
  void* page = ::mmap(nullptr, kRingHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, ring, 0);
  if (page == MAP_FAILED) throw_errno("mmap", errno);
  header_map_ = Mapping(static_cast<const uint8_t*>(page), kRingHeaderBytes);
  void* data = ::mmap(nullptr, capacity_, PROT_READ, MAP_SHARED, ring, static_cast<off_t>(kRingHeaderBytes));
  if (data == MAP_FAILED) throw_errno("mmap", errno);
  ring_data_ = std::make_shared<MappedBuffer>(Mapping(static_cast<const uint8_t*>(data), capacity_), 0, capacity_);
  fds[0].reset();  // the mappings stay valid without it

  auto* p = static_cast<uint8_t*>(page);
  header_ = RingHeader(p);
  if (std::memcmp(p, kRingMagic, 8) != 0) throw ring_invalid("ring header without the ASHMRING magic");
  if (load_u32(p + 8) != kRingLayoutVersion)
    throw ring_invalid("ring layout version " + std::to_string(load_u32(p + 8)) + ", this side reads 1");
  if (load_u32(p + 12) != kRingHeaderBytes)
    throw ring_invalid("ring header length " + std::to_string(load_u32(p + 12)) + ", expected 4096");
  if (load_u64(p + 16) != capacity_)
    throw ring_invalid("ring header says capacity " + std::to_string(load_u64(p + 16)) + ", STREAM_OPEN says " +
                       std::to_string(capacity_));
  const uint32_t max_readers = load_u32(p + 24);
  if (max_readers < 1 || max_readers > kMaxRingReaders || slot >= max_readers)
    throw ring_invalid("reader slot " + std::to_string(slot) + " outside the ring's " + std::to_string(max_readers) +
                       " slots");
  const uint64_t written = header_.write_position().load(std::memory_order_acquire);
  if (start > written || written - start > capacity_ || start % 64)
    throw ring_invalid("start position " + std::to_string(start) + " does not fit the write position " +
                       std::to_string(written));
  slot_ = static_cast<uint32_t>(slot);
  position_ = published_ = start;

  // The prologue: a sealed segment (§5.1) holding the Schema and the dictionaries so far.
  uint64_t length = frame.ipc_length;
  Mapping prologue = open_segment(fds[1].get(), frame.ipc_offset, length, /*allow_unsealed=*/false, kMaxPrologueBytes);
  fds[1].reset();
  prologue_segment_ = std::make_shared<MappedBuffer>(std::move(prologue), frame.ipc_offset, length);
  prologue_ = prologue_segment_;
  auto spans = read_messages(prologue_, /*eos_ends=*/true);
  if (spans.empty() || spans[0].message->type() != MessageType::SCHEMA)
    throw Error("ERR_IPC_INVALID", "the stream prologue does not start with a Schema message");
  auto queue = std::make_unique<detail::QueueMessageReader>();
  for (size_t i = 0; i < spans.size(); i++) {
    if (i > 0 && spans[i].message->type() != MessageType::DICTIONARY_BATCH)
      throw Error("ERR_IPC_INVALID", "the stream prologue holds a " +
                                         arrow::ipc::FormatMessageType(spans[i].message->type()) + " message");
    queue->push(std::move(spans[i].message));
  }
  messages_ = queue.get();
  reader_ = unwrap(arrow::ipc::RecordBatchStreamReader::Open(std::move(queue)));
  schema_ = reader_->schema();

  data_event_ = std::move(fds[2]);
  space_event_ = std::move(fds[3]);
  make_nonblocking(space_event_.get());
  releases_ = std::make_shared<detail::ReleaseQueue>(
      detail::ReleaseQueue{header_, slot_, space_event_.get(), start, {}, 0});
}

std::unique_ptr<StreamReader> StreamReader::open(Channel& channel, const Frame& frame, std::vector<Fd> fds,
                                                 StreamReaderOptions options) {
  std::unique_ptr<StreamReader> reader;
  try {
    if (channel.stream_reader_open_) throw Error("ERR_PROTOCOL", "a second stream while one is open on this connection");
    reader.reset(new StreamReader(channel, frame, std::move(fds), options));
  } catch (const Error& e) {
    channel.send_error(e, frame.message_id);
    throw;
  }
  channel.stream_reader_open_ = true;
  Frame ack;
  ack.kind = Kind::Ack;
  ack.correlation_id = frame.message_id;
  channel.send_frame(ack);
  return reader;
}

std::unique_ptr<StreamReader> StreamReader::accept(Channel& channel, Timeout timeout, StreamReaderOptions options) {
  const Deadline d = deadline_of(timeout);
  while (channel.stream_offers_.empty()) {
    if (channel.peer_gone()) throw Error("ERR_PEER_CLOSED", "the peer hung up before opening a stream");
    auto r = channel.read_frame(d);
    if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up before opening a stream");
    channel.handle_other(*r);
  }
  auto offer = std::move(channel.stream_offers_.front());
  channel.stream_offers_.pop_front();
  return open(channel, offer.frame, std::move(offer.fds), options);
}

std::unique_ptr<StreamReader> subscribe_on(Channel& channel, const KV& metadata, Timeout timeout) {
  Frame subscribe;
  subscribe.kind = Kind::Subscribe;
  subscribe.metadata = metadata;
  const uint64_t id = channel.send_frame(subscribe);
  const Deadline d = deadline_of(timeout);
  while (channel.stream_offers_.empty()) {
    auto r = channel.read_frame(d);
    if (!r) throw Error("ERR_PEER_CLOSED", "the publication hung up before answering SUBSCRIBE");
    if (r->frame.kind == Kind::Error && r->frame.correlation_id == id) throw remote_error(r->frame, "subscription refused");
    if (!channel.handle_other(*r)) throw Error("ERR_PEER_CLOSED", "the publication said GOODBYE before answering SUBSCRIBE");
  }
  auto offer = std::move(channel.stream_offers_.front());
  channel.stream_offers_.pop_front();
  StreamReaderOptions options;
  options.read_timeout = timeout;
  return StreamReader::open(channel, offer.frame, std::move(offer.fds), options);
}

std::optional<StreamBatch> StreamReader::read() {
  const Deadline d = deadline_of(options_.read_timeout);
  for (;;) {
    if (closed_) throw Error("ERR_CLOSED", "the stream reader is closed");
    if (ended_) return std::nullopt;
    // Gone first, then the position: a producer's last records are published before it dies.
    const bool gone = channel_->peer_gone();
    const uint64_t write_position = load_write_position();
    if (write_position > position_) {
      auto batch = read_record(write_position);
      if (batch) return batch;
      continue;
    }
    if (gone) throw gone_error();
    take_segments();  // map what arrived (their fds close) while there is nothing to read
    if (d && Clock::now() >= *d)
      throw Error("ERR_TIMEOUT", "no batch within " + std::to_string(options_.read_timeout->count()) + " ms");
    sleep_for_data(d);
  }
}

Error StreamReader::gone_error() const {
  if (channel_->failure() && channel_->failure()->code() == "ERR_CLOSED") return *channel_->failure();
  return Error("ERR_PEER_CLOSED",
               "the producer left the stream after " + std::to_string(batches_read_) + " batches without ending it");
}

uint64_t StreamReader::load_write_position() {
  const uint64_t position = header_.write_position().load(std::memory_order_acquire);
  if (position < published_)
    broken(ring_invalid("the write position went back from " + std::to_string(published_) + " to " +
                        std::to_string(position)));
  if (position - releases_->read_position > capacity_)
    broken(ring_invalid("the write position " + std::to_string(position) + " is more than the " +
                        std::to_string(capacity_) + "-byte ring ahead of this reader (" +
                        std::to_string(releases_->read_position) + ")"));
  published_ = position;
  return position;
}

// §12.3, the waiter's half: flag, re-check, sleep on the eventfd (and the socket), reset it.
void StreamReader::sleep_for_data(const Deadline& d) {
  auto waiting = header_.waiting(slot_);
  waiting.store(1, std::memory_order_seq_cst);
  if (header_.write_position().load(std::memory_order_seq_cst) > position_ || channel_->peer_gone()) {
    waiting.store(0, std::memory_order_seq_cst);
    return;
  }
  std::vector<pollfd> fds{{data_event_.get(), POLLIN, 0}, {channel_->native_handle(), POLLIN, 0}};
  poll_all(fds, sleep_ms(d));
  if (fds[0].revents & POLLIN) eventfd_drain(data_event_.get());
  if (fds[1].revents) channel_->pump(0);  // a hang-up, GOODBYE or STREAM_SEGMENT
  waiting.store(0, std::memory_order_seq_cst);
}

std::optional<StreamBatch> StreamReader::read_record(uint64_t write_position) {
  const uint64_t offset = position_ % capacity_;
  const uint8_t* record = ring_data_->data() + offset;
  const uint32_t length = load_u32(record);
  const uint32_t kind = load_u32(record + 4);
  const uint64_t sequence = load_u64(record + 8);
  const uint64_t ipc_length = load_u64(record + 16);
  const uint64_t available = write_position - position_;
  const std::string where = "record at data offset " + std::to_string(offset);
  if (length < kRecordHeaderBytes || length % 64)
    broken(ring_invalid(where + ": length " + std::to_string(length) + " is not a positive multiple of 64"));
  if (length > capacity_ - offset)
    broken(ring_invalid(where + ": length " + std::to_string(length) + " runs past the end of the " +
                        std::to_string(capacity_) + "-byte data area"));
  if (length > available)
    broken(ring_invalid(where + ": length " + std::to_string(length) + " runs past the write position (" +
                        std::to_string(available) + " bytes published)"));
  switch (static_cast<RecordKind>(kind)) {
    case RecordKind::Batch:
      if (ipc_length == 0 || ipc_length > length - kRecordHeaderBytes)
        broken(ring_invalid(where + ": IPC length " + std::to_string(ipc_length) + " does not fit its " +
                            std::to_string(length) + "-byte record"));
      break;
    case RecordKind::Padding:
      if (length != capacity_ - offset)
        broken(ring_invalid(where + ": padding of " + std::to_string(length) + " bytes does not fill the " +
                            std::to_string(capacity_ - offset) + " bytes left"));
      break;
    case RecordKind::External:
    case RecordKind::End:
      break;
    default:
      broken(ring_invalid(where + ": unknown record kind " + std::to_string(kind)));
  }
  const uint64_t ticket = releases_->hold(position_ + length);
  position_ += length;
  try {
    switch (static_cast<RecordKind>(kind)) {
      case RecordKind::Padding:
        releases_->release(ticket);
        return std::nullopt;
      case RecordKind::End:
        ended_ = true;
        releases_->release(ticket);
        return std::nullopt;
      case RecordKind::Batch:
        return decode(arrow::SliceBuffer(ring_data_, static_cast<int64_t>(offset + kRecordHeaderBytes),
                                         static_cast<int64_t>(ipc_length)),
                      sequence, ticket);
      default:
        return decode(wait_segment(sequence), sequence, ticket);
    }
  } catch (...) {
    if (releases_) releases_->release(ticket);
    throw;
  }
}

StreamBatch StreamReader::decode(const std::shared_ptr<arrow::Buffer>& bytes, uint64_t sequence, uint64_t ticket) {
  auto spans = read_messages(bytes, /*eos_ends=*/false);
  if (spans.empty() || spans.back().message->type() != MessageType::RECORD_BATCH)
    throw Error("ERR_IPC_INVALID", "a stream record that does not end with a RecordBatch message");
  for (size_t i = 0; i + 1 < spans.size(); i++)
    if (spans[i].message->type() != MessageType::DICTIONARY_BATCH)
      throw Error("ERR_IPC_INVALID", "a stream record holds a " +
                                         arrow::ipc::FormatMessageType(spans[i].message->type()) +
                                         " message before its RecordBatch");
  std::shared_ptr<arrow::RecordBatch> batch;
  arrow::Status st;
  bool leftover = false;
  try {
    for (auto& span : spans) {
      const bool dictionary = span.message->type() == MessageType::DICTIONARY_BATCH;
      messages_->push(dictionary ? copy_message(*span.message) : std::move(span.message));
    }
    st = reader_->ReadNext(&batch);
    leftover = !messages_->empty();
  } catch (...) {
    messages_->clear();  // nothing of this record may reach the next one
    throw;
  }
  messages_->clear();
  check(st);
  if (!batch || leftover) throw Error("ERR_IPC_INVALID", "a stream record the Arrow reader did not read as one batch");
  validate_batch(*batch);
  batches_read_++;
  return StreamBatch(std::move(batch), sequence, bytes, releases_, ticket);
}

// Maps the STREAM_SEGMENTs that arrived (§12.1); a bad one is answered with ERROR.
void StreamReader::take_segments() {
  auto& queue = channel_->stream_segments_;
  while (!queue.empty()) {
    auto r = std::move(queue.front());
    queue.pop_front();
    std::optional<uint64_t> sequence;
    try {
      sequence = decimal(r.frame, "sequence", "STREAM_SEGMENT");
      if (r.fds.size() != 1 || r.frame.fd_count != 1)
        throw Error("ERR_PROTOCOL", "STREAM_SEGMENT must carry exactly 1 fd, got " + std::to_string(r.fds.size()));
      uint64_t length = r.frame.ipc_length;
      Mapping mapping = open_segment(r.fds[0].get(), r.frame.ipc_offset, length, false, options_.max_message_bytes);
      r.fds.clear();
      segments_[*sequence] = std::make_shared<MappedBuffer>(std::move(mapping), r.frame.ipc_offset, length);
      segment_errors_.erase(*sequence);
    } catch (const Error& e) {
      channel_->send_error(e, r.frame.message_id);
      if (sequence) segment_errors_.insert_or_assign(*sequence, e);
    }
  }
}

// The segment of an EXTERNAL record: the producer sent it before publishing the record.
std::shared_ptr<arrow::Buffer> StreamReader::wait_segment(uint64_t sequence) {
  for (;;) {
    take_segments();
    if (auto it = segments_.find(sequence); it != segments_.end()) {
      auto segment = std::move(it->second);
      segments_.erase(it);
      return segment;
    }
    if (auto it = segment_errors_.find(sequence); it != segment_errors_.end()) {
      Error e = it->second;
      segment_errors_.erase(it);
      throw e;
    }
    if (channel_->peer_gone()) throw gone_error();
    channel_->pump(kSleepBoundMs);
  }
}

void StreamReader::broken(const Error& e) {
  channel_->send_error(e, 0);
  close();
  throw e;
}

void StreamReader::close() {
  if (closed_) return;
  closed_ = true;
  channel_->stream_reader_open_ = false;
  channel_->stream_segments_.clear();
  if (!ended_) channel_->close();  // leaving early: the producer sees the hang-up and frees the slot
  releases_.reset();               // batches still held release nothing any more
  reader_.reset();
  messages_ = nullptr;
  segments_.clear();
  header_map_.reset();
  ring_data_.reset();  // unmapped once no batch references it
  data_event_.reset();
  space_event_.reset();
}

// ---------------------------------------------------------------------------------------------
// Producer

RingProducer::RingProducer(std::shared_ptr<arrow::Schema> schema, StreamWriterOptions options,
                           uint32_t default_readers)
    : schema_(std::move(schema)), options_(std::move(options)), capacity_(options_.capacity_bytes) {
  static std::atomic<uint64_t> next_stream_id{1};
  if (!schema_) throw Error("ERR_INVALID_ARGUMENT", "a stream needs a schema");
  check_ring_capacity(capacity_);
  max_readers_ = options_.max_readers ? options_.max_readers : default_readers;
  if (max_readers_ < 1 || max_readers_ > kMaxRingReaders)
    throw Error("ERR_INVALID_ARGUMENT", "max_readers must be 1..62, got " + std::to_string(max_readers_));
  if (options_.max_messages && *options_.max_messages < 1)
    throw Error("ERR_INVALID_ARGUMENT", "max_messages must be at least 1");
  stream_id_ = next_stream_id++;
  has_dictionaries_ = false;
  for (auto& f : schema_->fields()) has_dictionaries_ = has_dictionaries_ || has_dictionaries(*f->type());

  // Arrow's stream writer produces each batch's messages: dictionaries (whole, delta or
  // replacement), then the RecordBatch, buffers 64-byte aligned, uncompressed.
  sink_ = std::make_shared<detail::CaptureStream>();
  auto write_options = arrow::ipc::IpcWriteOptions::Defaults();
  write_options.alignment = 64;
  write_options.emit_dictionary_deltas = true;
  writer_ = unwrap(arrow::ipc::MakeStreamWriter(sink_, schema_, write_options));
  schema_bytes_ = sink_->take();
  if (schema_bytes_.empty()) {  // a writer that defers the schema: serialize it ourselves
    auto serialized = unwrap(arrow::ipc::SerializeSchema(*schema_));
    schema_bytes_.assign(serialized->data(), serialized->data() + serialized->size());
    schema_deferred_ = true;
  }

  ring_fd_ = Fd(::memfd_create("arrow-shm-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!ring_fd_) throw_errno("memfd_create", errno);
  const uint64_t size = kRingHeaderBytes + capacity_;
  if (::ftruncate(ring_fd_.get(), static_cast<off_t>(size)) != 0) throw_errno("ftruncate", errno);
  if (::fcntl(ring_fd_.get(), F_ADD_SEALS, kRingSeals) != 0) throw_errno("fcntl(F_ADD_SEALS)", errno);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd_.get(), 0);
  if (p == MAP_FAILED) throw_errno("mmap", errno);
  map_ = static_cast<uint8_t*>(p);
  data_ = map_ + kRingHeaderBytes;
  header_ = RingHeader(map_);
  // A new memfd reads as zeros: only the constants are written (§12.4 step 1).
  std::memcpy(map_, kRingMagic, 8);
  const uint32_t layout = kRingLayoutVersion, header_length = kRingHeaderBytes;
  std::memcpy(map_ + 8, &layout, 4);
  std::memcpy(map_ + 12, &header_length, 4);
  std::memcpy(map_ + 16, &capacity_, 8);
  std::memcpy(map_ + 24, &max_readers_, 4);
  try {
    space_event_ = make_eventfd();
  } catch (...) {
    close();
    throw;
  }
}

void RingProducer::attach(Channel& channel, uint64_t correlation_id) {
  if (closed_ || ended_) throw Error("ERR_CLOSED", "the stream has ended");
  if (!channel.peer_has_capability("stream"))
    throw Error("ERR_PROTOCOL", "the peer does not accept streams (no 'stream' capability)");
  uint32_t slot = 0;
  while (slot < max_readers_ && readers_.count(slot)) slot++;
  if (slot >= max_readers_)
    throw Error(kErrNoReaderSlot, "all " + std::to_string(max_readers_) + " reader slots of the stream are taken");

  std::vector<uint8_t> prologue = schema_bytes_;
  prologue.insert(prologue.end(), dictionary_messages_.begin(), dictionary_messages_.end());
  Fd segment = make_segment(prologue.size(), 0, /*seal=*/true,
                            [&](uint8_t* to, uint64_t n) { std::memcpy(to, prologue.data(), n); });
  Reader reader{&channel, make_eventfd()};
  const int data_event = reader.data_event.get();
  header_.read_position(slot).store(write_position_, std::memory_order_seq_cst);
  header_.waiting(slot).store(0, std::memory_order_seq_cst);
  header_.pid(slot).store(channel.peer_pid(), std::memory_order_relaxed);
  header_.state(slot).store(1, std::memory_order_seq_cst);
  readers_.emplace(slot, std::move(reader));

  Frame open;
  open.kind = Kind::StreamOpen;
  open.correlation_id = correlation_id;
  open.ipc_length = prologue.size();
  open.fd_count = 4;
  for (auto& [k, v] : options_.metadata)
    if (std::none_of(std::begin(kOpenKeys), std::end(kOpenKeys), [&](const char* key) { return k == key; }))
      open.metadata.emplace_back(k, v);
  open.metadata.emplace_back("stream_id", std::to_string(stream_id_));
  open.metadata.emplace_back("reader_slot", std::to_string(slot));
  open.metadata.emplace_back("start_position", std::to_string(write_position_));
  open.metadata.emplace_back("capacity", std::to_string(capacity_));
  try {
    const uint64_t id = channel.send_frame_fds(open, {ring_fd_.get(), segment.get(), data_event, space_event_.get()});
    segment.reset();  // the peer holds its own fd now
    channel.await_ack(id, deadline_of(options_.attach_timeout));
  } catch (...) {
    detach(slot);
    throw;
  }
}

void RingProducer::detach(uint32_t slot) {
  auto it = readers_.find(slot);
  if (it == readers_.end()) return;
  readers_.erase(it);  // closes its data eventfd
  if (!closed_) header_.state(slot).store(0, std::memory_order_seq_cst);
}

void RingProducer::detach_departed() {
  for (auto it = readers_.begin(); it != readers_.end();) {
    const uint32_t slot = it->first;
    Channel& channel = *it->second.channel;
    ++it;
    if (!channel.peer_gone()) continue;
    if (channel.failure() && channel.failure()->code() != "ERR_PEER_CLOSED") reader_failure_ = channel.failure();
    detach(slot);
  }
}

void RingProducer::forget_departed() { poll_readers(true); }

// Looks at the readers' sockets now and then (a busy producer never sleeps on them) and
// detaches those that left.
void RingProducer::poll_readers(bool force) {
  const auto now = Clock::now();
  if (force || now >= next_socket_check_) {
    next_socket_check_ = now + kSocketCheckInterval;
    for (auto& [slot, reader] : readers_) reader.channel->pump(0);
  }
  detach_departed();
}

// The same, and a channel stream fails once its one reader left (before the END record).
void RingProducer::check_readers(bool force) {
  poll_readers(force);
  if (fail_without_readers && readers_.empty()) {
    if (reader_failure_) throw *reader_failure_;
    throw Error("ERR_PEER_CLOSED", "the reader left the stream");
  }
}

// The lowest position an attached reader still holds (clamped: a reader cannot claim more).
uint64_t RingProducer::oldest_held() {
  uint64_t oldest = write_position_;
  const uint64_t floor = write_position_ > capacity_ ? write_position_ - capacity_ : 0;
  for (auto& [slot, reader] : readers_) {
    uint64_t position = header_.read_position(slot).load(std::memory_order_seq_cst);
    position = std::max(std::min(position, write_position_), floor);
    oldest = std::min(oldest, position);
  }
  while (!unreleased_.empty() && unreleased_.front() <= oldest) unreleased_.pop_front();
  return oldest;
}

bool RingProducer::fits(uint64_t needed) {
  if (capacity_ - (write_position_ - oldest_held()) < needed) return false;
  return !options_.max_messages || unreleased_.size() < *options_.max_messages;
}

// Room for `length` contiguous bytes: their data offset (a PADDING record first if needed).
uint64_t RingProducer::reserve(uint64_t length, bool wait) {
  const Deadline d = deadline_of(options_.write_timeout);
  for (;;) {
    check_readers(false);
    const uint64_t offset = write_position_ % capacity_;
    const uint64_t tail = capacity_ - offset;
    const uint64_t needed = length <= tail ? length : tail + length;
    if (fits(needed)) {
      if (length > tail) {
        write_header(offset, static_cast<uint32_t>(tail), RecordKind::Padding, 0, 0);
        publish(tail, false);
        return 0;
      }
      return offset;
    }
    if (options_.fail_when_full && !wait) {
      if (options_.max_messages && unreleased_.size() >= *options_.max_messages)
        throw Error(kErrRingFull, std::to_string(unreleased_.size()) + " records are not released yet (max_messages " +
                                      std::to_string(*options_.max_messages) + ")");
      throw Error(kErrRingFull, "the ring has no room for a " + std::to_string(length) + "-byte record (" +
                                    std::to_string(capacity_) + " bytes, " +
                                    std::to_string(write_position_ - oldest_held()) + " held by readers)");
    }
    if (d && Clock::now() >= *d)
      throw Error("ERR_TIMEOUT", "no room in the ring within " + std::to_string(options_.write_timeout->count()) + " ms");
    sleep_until([&] { return fits(needed); }, d);
  }
}

// §12.3 from the producer's side: flag, re-check, sleep on the space eventfd (and the sockets).
void RingProducer::sleep_until(const std::function<bool()>& ready, const Deadline& d) {
  auto flag = header_.producer_waiting();
  flag.store(1, std::memory_order_seq_cst);
  if (ready()) {
    flag.store(0, std::memory_order_seq_cst);
    return;
  }
  std::vector<pollfd> fds{{space_event_.get(), POLLIN, 0}};
  for (auto& [slot, reader] : readers_) fds.push_back({reader.channel->native_handle(), POLLIN, 0});
  poll_all(fds, sleep_ms(d));
  if (fds[0].revents & POLLIN) eventfd_drain(space_event_.get());
  flag.store(0, std::memory_order_seq_cst);
  bool sockets = false;
  for (size_t i = 1; i < fds.size(); i++) sockets = sockets || fds[i].revents;
  if (sockets) poll_readers(true);
}

void RingProducer::publish(uint64_t advance, bool counted) {
  write_position_ += advance;
  header_.write_position().store(write_position_, std::memory_order_seq_cst);
  if (counted) unreleased_.push_back(write_position_);
  for (auto& [slot, reader] : readers_) wake_if_waiting(header_.waiting(slot), reader.data_event.get());
}

void RingProducer::write_header(uint64_t offset, uint32_t length, RecordKind kind, uint64_t sequence,
                                uint64_t ipc_length) {
  uint8_t header[kRecordHeaderBytes] = {};
  const uint32_t k = static_cast<uint32_t>(kind);
  std::memcpy(header, &length, 4);
  std::memcpy(header + 4, &k, 4);
  std::memcpy(header + 8, &sequence, 8);
  std::memcpy(header + 16, &ipc_length, 8);
  std::memcpy(data_ + offset, header, sizeof header);
}

void RingProducer::write(const arrow::RecordBatch& batch) {
  if (closed_ || ended_) throw Error("ERR_CLOSED", "the stream has ended");
  if (!batch.schema()->Equals(*schema_, /*check_metadata=*/false))
    throw Error("ERR_INVALID_ARGUMENT", "the batch schema differs from the stream schema");
  check(writer_->WriteRecordBatch(batch));
  std::vector<uint8_t> payload = unsent_dictionaries_;
  {
    auto written = sink_->take();
    size_t skip = 0;
    if (schema_deferred_) {  // the Schema message the writer emits with the first batch: the prologue has it
      auto view = arrow::Buffer::Wrap(written.data(), written.size());
      arrow::io::BufferReader in(view);
      auto first = unwrap(arrow::ipc::ReadMessage(&in));
      if (!first || first->type() != MessageType::SCHEMA)
        throw Error("ERR_INVALID_ARGUMENT", "the Arrow writer did not start with the Schema");
      skip = static_cast<size_t>(unwrap(in.Tell()));
      schema_deferred_ = false;
    }
    payload.insert(payload.end(), written.begin() + static_cast<std::ptrdiff_t>(skip), written.end());
  }
  // The dictionary messages of this record: a joiner's prologue, or a failed write's retry.
  std::vector<uint8_t> dictionaries;
  if (has_dictionaries_) {
    auto view = arrow::Buffer::Wrap(payload.data(), payload.size());
    for (auto& span : read_messages(view, false))
      if (span.message->type() == MessageType::DICTIONARY_BATCH)
        dictionaries.insert(dictionaries.end(), payload.begin() + span.start, payload.begin() + span.end);
  }
  try {
    append_record(payload);
  } catch (...) {
    // Arrow's writer counts them as sent; they were not published: they go before the next batch.
    unsent_dictionaries_ = std::move(dictionaries);
    throw;
  }
  unsent_dictionaries_.clear();
  dictionary_messages_.insert(dictionary_messages_.end(), dictionaries.begin(), dictionaries.end());
  sequence_++;
}

void RingProducer::append_record(const std::vector<uint8_t>& payload) {
  const uint64_t record_length = align64(kRecordHeaderBytes + payload.size());
  const uint64_t sequence = sequence_;
  if (record_length > std::min(capacity_ / 4, kMaxRecordBytes)) {
    const uint64_t offset = reserve(kRecordHeaderBytes, false);
    send_segment(payload, sequence);
    write_header(offset, kRecordHeaderBytes, RecordKind::External, sequence, payload.size());
    publish(kRecordHeaderBytes, true);
    return;
  }
  const uint64_t offset = reserve(record_length, false);
  uint8_t* record = data_ + offset;
  std::memcpy(record + kRecordHeaderBytes, payload.data(), payload.size());
  std::memset(record + kRecordHeaderBytes + payload.size(), 0, record_length - kRecordHeaderBytes - payload.size());
  write_header(offset, static_cast<uint32_t>(record_length), RecordKind::Batch, sequence, payload.size());
  publish(record_length, true);
}

// A record too big for the ring: its own sealed segment, the Schema first so that it is a valid
// IPC stream on its own, sent to every reader before the EXTERNAL record (§12.1).
void RingProducer::send_segment(const std::vector<uint8_t>& payload, uint64_t sequence) {
  Fd segment = make_segment(schema_bytes_.size() + payload.size(), 0, /*seal=*/true, [&](uint8_t* to, uint64_t) {
    std::memcpy(to, schema_bytes_.data(), schema_bytes_.size());
    std::memcpy(to + schema_bytes_.size(), payload.data(), payload.size());
  });
  Frame frame;
  frame.kind = Kind::StreamSegment;
  frame.ipc_offset = schema_bytes_.size();
  frame.ipc_length = payload.size();
  frame.fd_count = 1;
  frame.metadata = {{"stream_id", std::to_string(stream_id_)}, {"sequence", std::to_string(sequence)}};
  std::vector<uint32_t> failed;
  for (auto& [slot, reader] : readers_) {
    try {
      reader.channel->send_frame(frame, segment.get());
    } catch (const Error&) {
      failed.push_back(slot);
    }
  }
  for (uint32_t slot : failed) detach(slot);
}

void RingProducer::end(Timeout timeout) {
  if (closed_) throw Error("ERR_CLOSED", "the stream is closed");
  if (!ended_) {
    const uint64_t offset = reserve(kRecordHeaderBytes, /*wait=*/true);  // the END always waits for room
    write_header(offset, kRecordHeaderBytes, RecordKind::End, sequence_, 0);
    ended_ = true;
    header_.ended().store(1, std::memory_order_seq_cst);
    publish(kRecordHeaderBytes, false);
  }
  const Deadline d = deadline_of(timeout);
  auto drained = [&] {
    detach_departed();
    return oldest_held() >= write_position_;
  };
  while (!drained()) {
    if (d && Clock::now() >= *d)
      throw Error("ERR_TIMEOUT", "the readers did not release every record within " +
                                     std::to_string(timeout->count()) + " ms");
    sleep_until(drained, d);
    poll_readers(false);
  }
}

void RingProducer::close() {
  if (closed_) return;
  closed_ = true;
  readers_.clear();  // their data eventfds; readers see their channel, not the ring, go
  if (map_) ::munmap(map_, kRingHeaderBytes + capacity_);
  map_ = data_ = nullptr;
  ring_fd_.reset();
  space_event_.reset();
}

// ---------------------------------------------------------------------------------------------
// A stream on one channel

std::unique_ptr<StreamWriter> StreamWriter::open(Channel& channel, std::shared_ptr<arrow::Schema> schema,
                                                 StreamWriterOptions options) {
  auto producer = std::make_unique<RingProducer>(std::move(schema), std::move(options), 1);
  producer->fail_without_readers = true;
  producer->attach(channel);
  return std::make_unique<StreamWriter>(std::move(producer), channel);
}

void StreamWriter::write(const arrow::Table& table) {
  arrow::TableBatchReader reader(table);
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    check(reader.ReadNext(&batch));
    if (!batch) return;
    producer_->write(*batch);
  }
}

void StreamWriter::close(Timeout timeout) {
  if (producer_->closed()) return;
  try {
    producer_->end(timeout);
  } catch (...) {
    producer_->close();
    throw;
  }
  producer_->close();
}

void StreamWriter::abort() {
  producer_->close();
  channel_->close();
}

// ---------------------------------------------------------------------------------------------
// Publish / subscribe

Publication::Publication(const std::string& address, std::shared_ptr<arrow::Schema> schema, StreamWriterOptions options)
    : address_(address),
      producer_(std::make_unique<RingProducer>(std::move(schema), std::move(options), kMaxRingReaders)),
      listener_(std::make_unique<Listener>(address)) {}

// Accepts one connection waiting (up to `timeout_ms`) and attaches it on its SUBSCRIBE.
bool Publication::admit(int timeout_ms) {
  if (!listener_) return false;
  pollfd p{listener_->native_handle(), POLLIN, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r <= 0) return false;
  std::unique_ptr<Channel> accepted;
  try {
    accepted = listener_->accept(std::chrono::seconds(5));
  } catch (const Error& e) {
    if (e.code() == "ERR_SYSCALL") throw;
    return true;  // a bad or vanished connector: it got its ERROR, the publication goes on
  }
  Channel& channel = *accepted;
  channels_.push_back(std::move(accepted));
  channel.accepts_subscribe_ = true;
  const Deadline d = Clock::now() + std::chrono::seconds(5);
  try {
    while (channel.subscribe_requests_.empty()) {
      auto frame = channel.read_frame(d);
      if (!frame || !channel.handle_other(*frame)) throw Error("ERR_PEER_CLOSED", "the subscriber left");
    }
  } catch (const Error&) {
    channel.close();
    return true;
  }
  const Frame request = channel.subscribe_requests_.front();
  channel.subscribe_requests_.pop_front();
  try {
    producer_->attach(channel, request.message_id);
  } catch (const Error& e) {
    if (e.code() == "ERR_SYSCALL") throw;
    channel.send_error(e, request.message_id);
    channel.close();
  }
  return true;
}

size_t Publication::subscribers() {
  producer_->forget_departed();
  // Channels the producer no longer references can go.
  channels_.erase(std::remove_if(channels_.begin(), channels_.end(), [](auto& c) { return c->peer_gone(); }),
                  channels_.end());
  return producer_->readers();
}

void Publication::wait_for_subscribers(size_t count, Timeout timeout) {
  const Deadline d = deadline_of(timeout);
  while (subscribers() < count) {
    if (closed_) throw Error("ERR_CLOSED", "the publication is closed");
    if (d && Clock::now() >= *d)
      throw Error("ERR_TIMEOUT", "fewer than " + std::to_string(count) + " subscribers within " +
                                     std::to_string(timeout->count()) + " ms");
    admit(d ? std::min(poll_timeout_ms(d), 100) : 100);
  }
}

void Publication::write(const arrow::RecordBatch& batch) {
  if (closed_) throw Error("ERR_CLOSED", "the publication is closed");
  while (admit(0)) {
  }
  subscribers();
  producer_->write(batch);
}

void Publication::close(Timeout timeout) {
  if (closed_) return;
  listener_.reset();  // no more joiners
  try {
    producer_->end(timeout);
  } catch (...) {
    abort();
    throw;
  }
  abort();
}

void Publication::abort() {
  closed_ = true;
  listener_.reset();
  producer_->close();
  for (auto& channel : channels_) channel->close();
  channels_.clear();
}

}  // namespace arrow_shm
