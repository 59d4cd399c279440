// A stream's consumer (docs/PROTOCOL.md §12): maps the producer's ring, decodes each record in
// place, releases in order; subscribe_on() for a publication.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arrow/ipc/reader.h>

#include "internal.hpp"

namespace arrow_shm {

using namespace detail;  // this file's helpers (internal.hpp)

namespace {

using IpcMessage = arrow::ipc::Message;
using arrow::ipc::MessageType;

// A joiner's prologue is checked like a TABLE segment, with this size limit (as Node and Python).
constexpr uint64_t kMaxPrologueBytes = 1ull << 30;

// A dictionary outlives the record it came in (later batches use it): copied out of the ring.
std::unique_ptr<IpcMessage> copy_message(const IpcMessage& m) {
  auto metadata = unwrap(m.metadata()->CopySlice(0, m.metadata()->size()));
  std::shared_ptr<arrow::Buffer> body;
  if (m.body()) body = unwrap(m.body()->CopySlice(0, m.body()->size()));
  return unwrap(IpcMessage::Open(metadata, body));
}

}  // namespace

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
// A waiting producer is woken by every advance (§12.3): a producer of another peer may sleep
// without a bound, and the room it needs may be far less than half the ring.
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
    if (!is_open_key(k)) metadata_.emplace_back(k, v);
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

  header_ = RingHeader(static_cast<uint8_t*>(page));
  header_.check(capacity_, slot);
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
  checker_ = IpcChecker(options_.ipc_limits);
  auto spans = read_messages(prologue_, /*eos_ends=*/true, &checker_);
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
  plan_ = DecodePlan::make(schema_, options_.ipc_limits);

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

std::unique_ptr<StreamReader> subscribe_on(Channel& channel, const KV& metadata, Timeout timeout, Validate validate) {
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
  options.validate = validate;
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
    if (spin_until(options_.spin_micros,
                   [&] { return header_.write_position().load(std::memory_order_acquire) > position_; }))
      continue;
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
  auto ready = [&] {
    return header_.write_position().load(std::memory_order_seq_cst) > position_ || channel_->peer_gone();
  };
  if (sleep_on(header_.waiting(slot_), data_event_.get(), {channel_->native_handle()}, ready, d))
    channel_->pump(0);  // a hang-up, GOODBYE or STREAM_SEGMENT
}

std::optional<StreamBatch> StreamReader::read_record(uint64_t write_position) {
  const uint64_t offset = ring_offset(position_, capacity_);
  const auto [length, kind, sequence, ipc_length] = RecordHeader::read(ring_data_->data() + offset);
  const uint64_t available = write_position - position_;
  // Only an error names the record (a string per record costs an allocation).
  auto where = [&] { return "record at data offset " + std::to_string(offset); };
  if (length < kRecordHeaderBytes || length % 64)
    broken(ring_invalid(where() + ": length " + std::to_string(length) + " is not a positive multiple of 64"));
  if (length > capacity_ - offset)
    broken(ring_invalid(where() + ": length " + std::to_string(length) + " runs past the end of the " +
                        std::to_string(capacity_) + "-byte data area"));
  if (length > available)
    broken(ring_invalid(where() + ": length " + std::to_string(length) + " runs past the write position (" +
                        std::to_string(available) + " bytes published)"));
  switch (static_cast<RecordKind>(kind)) {
    case RecordKind::Batch:
      if (ipc_length == 0 || ipc_length > length - kRecordHeaderBytes)
        broken(ring_invalid(where() + ": IPC length " + std::to_string(ipc_length) + " does not fit its " +
                            std::to_string(length) + "-byte record"));
      break;
    case RecordKind::Padding:
      if (length != capacity_ - offset)
        broken(ring_invalid(where() + ": padding of " + std::to_string(length) + " bytes does not fill the " +
                            std::to_string(capacity_ - offset) + " bytes left"));
      break;
    case RecordKind::External:
    case RecordKind::End:
      break;
    default:
      broken(ring_invalid(where() + ": unknown record kind " + std::to_string(kind)));
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
  if (plan_) {
    if (auto batch = plan_->decode(bytes, options_.validate)) {
      if (!plan_->covers(options_.validate)) validate_batch(*batch, options_.validate);
      batches_read_++;
      return StreamBatch(std::move(batch), sequence, bytes, releases_, ticket);
    }
  }
  auto spans = read_messages(bytes, /*eos_ends=*/false, &checker_);
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
  validate_batch(*batch, options_.validate);
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
  plan_.reset();
  messages_ = nullptr;
  segments_.clear();
  header_map_.reset();
  ring_data_.reset();  // unmapped once no batch references it
  data_event_.reset();
  space_event_.reset();
}

}  // namespace arrow_shm
