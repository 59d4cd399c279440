// A stream's producer (docs/PROTOCOL.md §12): owns the ring, writes each batch's record into it
// for one (StreamWriter) or many (Publication) consumers.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

#include <arrow/io/interfaces.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>
#include <arrow/ipc/writer.h>
#include <arrow/type.h>

#include "internal.hpp"

namespace arrow_shm {

using namespace detail;  // this file's helpers (internal.hpp)

namespace {

using arrow::ipc::MessageType;

// How often a producer that never sleeps looks at its readers' sockets for a hang-up.
constexpr auto kSocketCheckInterval = std::chrono::milliseconds(10);
// Larger records travel in their own segment: a quarter of the ring (§12.2), and never more
// than a u32 record_length can describe (a PADDING record is shorter than the record after it).
constexpr uint64_t kMaxRecordBytes = 1ull << 31;
// Records go back to the ring's start (a PADDING record fills the rest, §12.2) once a record would
// end past the larger of these and the start is free already, so that records reuse a few
// cache-warm bytes instead of cycling through the whole (cold) ring. Back-pressure is unchanged:
// when the start is not free yet, records go on into the rest. (The Rust producer's rule.)
constexpr uint64_t kWarmBytes = 256 << 10;
constexpr uint64_t kWarmRecords = 4;

uint64_t align_record(uint64_t n) { return (n + kRecordAlign - 1) / kRecordAlign * kRecordAlign; }

// Arrow's stream writer options of every record: buffers 64-byte aligned, uncompressed,
// dictionaries as deltas when they grow.
arrow::ipc::IpcWriteOptions record_write_options() {
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.alignment = 64;
  options.emit_dictionary_deltas = true;
  return options;
}

bool has_dictionaries(const arrow::DataType& type) {
  if (type.id() == arrow::Type::DICTIONARY) return true;
  for (auto& f : type.fields())
    if (has_dictionaries(*f->type())) return true;
  return false;
}

}  // namespace

namespace detail {

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
  encoder_ = BatchEncoder::make(*schema_);

  // Arrow's stream writer produces each batch's messages: dictionaries (whole, delta or
  // replacement), then the RecordBatch, buffers 64-byte aligned, uncompressed.
  sink_ = std::make_shared<detail::CaptureStream>();
  writer_ = unwrap(arrow::ipc::MakeStreamWriter(sink_, schema_, record_write_options()));
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
  header_.init(capacity_, max_readers_);  // a new memfd reads as zeros: only the constants
  if (options_.prefault && ::madvise(map_, size, MADV_POPULATE_WRITE) != 0) {
    // A kernel before 5.14: write each page once (its zeros) instead.
    for (uint64_t at = 0; at < capacity_; at += 4096) reinterpret_cast<volatile uint8_t*>(data_)[at] = 0;
  }
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
    if (!is_open_key(k)) open.metadata.emplace_back(k, v);
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
  // Honest readers only move forward: the oldest position seen last time bounds the room from
  // below, so the readers' positions (cache lines they write) are read again only when it is short.
  if (!options_.max_messages && capacity_ - (write_position_ - held_from_) >= needed) return true;
  held_from_ = oldest_held();
  if (capacity_ - (write_position_ - held_from_) < needed) return false;
  return !options_.max_messages || unreleased_.size() < *options_.max_messages;
}

// Where a `length`-byte record goes: §12.2's place, or back at offset 0 when it would end past the
// warm part of the ring and the start is free already (kWarmBytes).
RecordPlacement RingProducer::place(uint64_t length) {
  const RecordPlacement natural = place_record(write_position_, length, capacity_);
  const uint64_t offset = ring_offset(write_position_, capacity_);
  const uint64_t tail = capacity_ - offset;
  const uint64_t warm = std::max(kWarmBytes, kWarmRecords * length);
  // (A PADDING record's length is a u32.)
  if (natural.padding == 0 && offset > 0 && offset + length > warm && tail <= UINT32_MAX && fits(tail + length))
    return {0, tail};
  return natural;
}

// Room for `length` contiguous bytes: their data offset (a PADDING record first if needed).
uint64_t RingProducer::reserve(uint64_t length, bool wait) {
  const Deadline d = deadline_of(options_.write_timeout);
  for (;;) {
    check_readers(false);
    const RecordPlacement at = place(length);
    const uint64_t needed = at.padding + length;
    if (fits(needed)) {
      if (at.padding) {
        write_header(ring_offset(write_position_, capacity_), static_cast<uint32_t>(at.padding), RecordKind::Padding,
                     0, 0);
        publish(at.padding, false);
      }
      return at.offset;
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
    if (spin_until(options_.spin_micros, [&] { return fits(needed); })) continue;
    sleep_until([&] { return fits(needed); }, d);
  }
}

// §12.3 from the producer's side: flag, re-check, sleep on the space eventfd (and the sockets).
void RingProducer::sleep_until(const std::function<bool()>& ready, const Deadline& d) {
  std::vector<int> sockets;
  for (auto& [slot, reader] : readers_) sockets.push_back(reader.channel->native_handle());
  if (sleep_on(header_.producer_waiting(), space_event_.get(), sockets, ready, d)) poll_readers(true);
}

void RingProducer::publish(uint64_t advance, bool counted) {
  write_position_ += advance;
  header_.write_position().store(write_position_, std::memory_order_seq_cst);
  if (counted && options_.max_messages) unreleased_.push_back(write_position_);
  for (auto& [slot, reader] : readers_) wake_if_waiting(header_.waiting(slot), reader.data_event.get());
}

void RingProducer::write_header(uint64_t offset, uint32_t length, RecordKind kind, uint64_t sequence,
                                uint64_t ipc_length) {
  RecordHeader{length, static_cast<uint32_t>(kind), sequence, ipc_length}.write(data_ + offset);
}

void RingProducer::write(const arrow::RecordBatch& batch) {
  if (closed_ || ended_) throw Error("ERR_CLOSED", "the stream has ended");
  if (!batch.schema()->Equals(*schema_, /*check_metadata=*/false))
    throw Error("ERR_INVALID_ARGUMENT", "the batch schema differs from the stream schema");
  if (!has_dictionaries_ && write_in_place(batch)) {
    sequence_++;
    return;
  }
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
    for (auto& span : read_messages(view, false, nullptr))
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

// A batch without dictionaries goes straight into its record's slot (one copy of each buffer, no
// intermediate stream): by the template encoder when it takes the batch, else by Arrow's writer.
// False, with nothing written, when the record is too big for the ring (the caller sends it in
// its own segment).
bool RingProducer::write_in_place(const arrow::RecordBatch& batch) {
  const int64_t planned = encoder_ ? encoder_->measure(batch) : -1;
  const auto options = record_write_options();
  arrow::ipc::IpcPayload payload;
  uint64_t ipc_length = static_cast<uint64_t>(planned);
  if (planned < 0) {
    check(arrow::ipc::GetRecordBatchPayload(batch, options, &payload));
    // WriteIpcPayload's layout: continuation and length, the flatbuffer padded to the alignment, the body.
    const auto alignment = static_cast<uint64_t>(options.alignment);
    const uint64_t message = (8 + static_cast<uint64_t>(payload.metadata->size()) + alignment - 1) / alignment * alignment;
    ipc_length = message + static_cast<uint64_t>(payload.body_length);
  }
  const uint64_t record_length = align_record(kRecordHeaderBytes + ipc_length);
  if (record_length > std::min(capacity_ / 4, kMaxRecordBytes)) return false;
  const uint64_t offset = reserve(record_length, false);
  uint8_t* record = data_ + offset;
  if (planned >= 0) {
    encoder_->write(record + kRecordHeaderBytes);
  } else {
    auto slot = std::make_shared<arrow::MutableBuffer>(record + kRecordHeaderBytes, static_cast<int64_t>(ipc_length));
    arrow::io::FixedSizeBufferWriter out(slot);  // refuses to write past the slot
    int32_t metadata_length = 0;
    check(arrow::ipc::WriteIpcPayload(payload, options, &out, &metadata_length));
    if (static_cast<uint64_t>(unwrap(out.Tell())) != ipc_length)
      throw Error("ERR_IPC_INVALID", "the Arrow writer wrote " + std::to_string(unwrap(out.Tell())) +
                                         " bytes for a " + std::to_string(ipc_length) + "-byte message");
  }
  std::memset(record + kRecordHeaderBytes + ipc_length, 0, record_length - kRecordHeaderBytes - ipc_length);
  write_header(offset, static_cast<uint32_t>(record_length), RecordKind::Batch, sequence_, ipc_length);
  publish(record_length, true);
  return true;
}

void RingProducer::append_record(const std::vector<uint8_t>& payload) {
  const uint64_t record_length = align_record(kRecordHeaderBytes + payload.size());
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

}  // namespace arrow_shm
