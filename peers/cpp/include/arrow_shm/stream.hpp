// arrow-shm streams (docs/PROTOCOL.md §12): many record batches of one schema through a shared
// ring segment. A StreamReader maps the producer's ring and decodes each batch in place (its
// columns point into the ring); a RingProducer owns a ring and writes batches into it for one
// (StreamWriter, on a Channel) or many (Publication) consumers.
//
// Not thread-safe: use a reader (and the batches it hands out) or a producer from one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <arrow/buffer.h>
#include <arrow/record_batch.h>
#include <arrow/table.h>

#include "arrow_shm/channel.hpp"

namespace arrow {
namespace ipc {
class RecordBatchWriter;
}
}  // namespace arrow

namespace arrow_shm {

// ---- ring layout (§12.2) ----
constexpr uint64_t kRingHeaderBytes = 4096;
constexpr uint32_t kRingLayoutVersion = 1;
constexpr uint64_t kMinRingCapacity = 65536;
constexpr uint64_t kMaxRingCapacity = 1ull << 40;
constexpr uint32_t kMaxRingReaders = 62;
constexpr uint64_t kDefaultRingCapacity = 16ull << 20;
constexpr uint64_t kRecordHeaderBytes = 64;
constexpr uint64_t kRecordAlign = 64;
enum class RecordKind : uint32_t { Batch = 1, Padding = 2, External = 3, End = 4 };

// Byte offsets of the header page's fields and of the fields of a reader slot (§12.2).
struct RingField {
  static constexpr size_t magic = 0, layout_version = 8, header_length = 12, capacity = 16, max_readers = 24;
  static constexpr size_t write_position = 64, producer_waiting = 72, ended = 76, slots = 128;
};
struct SlotField {
  static constexpr size_t bytes = 64, read_position = 0, state = 8, waiting = 12, pid = 16;
};

// ERR_INVALID_ARGUMENT unless a power of two in [65536, 2^40].
void check_ring_capacity(uint64_t capacity);

// The data offset of `position`: the ring's one wrap.
inline uint64_t ring_offset(uint64_t position, uint64_t capacity) { return position % capacity; }

// Where a record of `length` bytes goes when the producer is at `write` (§12.2): its data offset,
// after `padding` bytes of PADDING that fill the end of the ring when it would not fit there.
struct RecordPlacement {
  uint64_t offset;
  uint64_t padding;  // 0 when it fits before the end
};
RecordPlacement place_record(uint64_t write, uint64_t length, uint64_t capacity);

// The 64-byte header of every record (§12.2). `kind` stays raw: a peer may write any number.
struct RecordHeader {
  static constexpr size_t length_at = 0, kind_at = 4, sequence_at = 8, ipc_length_at = 16;
  uint32_t length = 0;
  uint32_t kind = 0;
  uint64_t sequence = 0;
  uint64_t ipc_length = 0;
  static RecordHeader read(const uint8_t* record);
  void write(uint8_t* record) const;  // the 24 fields, then zeros to 64 bytes
};

// The header page of a ring: every access of a shared field is one atomic operation (§12.3).
class RingHeader {
 public:
  explicit RingHeader(uint8_t* page = nullptr) : page_(page) {}
  uint8_t* page() const { return page_; }
  // The producer's constants of a new (zeroed) ring (§12.4 step 1).
  void init(uint64_t capacity, uint32_t max_readers) const;
  // A consumer's checks of a ring it was given: ERR_RING_INVALID unless it is the ring STREAM_OPEN describes.
  void check(uint64_t capacity, uint64_t slot) const;
  std::atomic_ref<uint64_t> write_position() const { return u64(RingField::write_position); }
  std::atomic_ref<uint32_t> producer_waiting() const { return u32(RingField::producer_waiting); }
  std::atomic_ref<uint32_t> ended() const { return u32(RingField::ended); }
  std::atomic_ref<uint64_t> read_position(uint32_t slot) const { return u64(slot_at(slot) + SlotField::read_position); }
  std::atomic_ref<uint32_t> state(uint32_t slot) const { return u32(slot_at(slot) + SlotField::state); }
  std::atomic_ref<uint32_t> waiting(uint32_t slot) const { return u32(slot_at(slot) + SlotField::waiting); }
  std::atomic_ref<uint32_t> pid(uint32_t slot) const { return u32(slot_at(slot) + SlotField::pid); }

 private:
  static size_t slot_at(uint32_t slot) { return RingField::slots + SlotField::bytes * static_cast<size_t>(slot); }
  std::atomic_ref<uint64_t> u64(size_t at) const { return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(page_ + at)); }
  std::atomic_ref<uint32_t> u32(size_t at) const { return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(page_ + at)); }
  uint8_t* page_;
};

// The waker's half of §12.3, after its position was stored: 1 -> 0, and only then the eventfd.
void wake_if_waiting(std::atomic_ref<uint32_t> flag, int eventfd);

// ---------------------------------------------------------------------------------------------
// Consumer

namespace detail {
struct ReleaseQueue;
class QueueMessageReader;
class CaptureStream;
class BatchEncoder;
class DecodePlan;
}  // namespace detail

// One batch read in place. Release it (or destroy it) when done: the producer may then reuse its
// bytes. The arrow::RecordBatch stays mapped after that, but its contents may change under it.
class StreamBatch {
 public:
  StreamBatch() = default;
  StreamBatch(std::shared_ptr<arrow::RecordBatch> batch, uint64_t sequence, std::shared_ptr<arrow::Buffer> data,
              std::weak_ptr<detail::ReleaseQueue> queue, uint64_t ticket)
      : batch(std::move(batch)), sequence(sequence), data(std::move(data)), queue_(std::move(queue)), ticket_(ticket) {}
  StreamBatch(const StreamBatch&) = delete;
  StreamBatch& operator=(const StreamBatch&) = delete;
  StreamBatch(StreamBatch&& o) noexcept { *this = std::move(o); }
  StreamBatch& operator=(StreamBatch&& o) noexcept;
  ~StreamBatch() { release(); }

  std::shared_ptr<arrow::RecordBatch> batch;
  uint64_t sequence = 0;
  std::shared_ptr<arrow::Buffer> data;  // the record's IPC messages (dictionaries, then the batch), in place

  void release();
  bool released() const { return queue_.expired(); }

 private:
  std::weak_ptr<detail::ReleaseQueue> queue_;
  uint64_t ticket_ = 0;
};

struct StreamReaderOptions {
  Timeout read_timeout;                                 // read(): ERR_TIMEOUT after this long without a batch
  uint64_t max_message_bytes = kDefaultMaxMessageBytes;  // largest batch accepted through its own segment
  IpcLimits ipc_limits;                                  // §14.1, for the prologue and every record
  Validate validate = Validate::Bounds;                  // the checks of every decoded batch (arrow_shm.hpp)
  uint64_t spin_micros = 0;  // busy-poll the write position this long before sleeping (§12.3)
};

class StreamReader {
 public:
  // Waits for the peer's STREAM_OPEN on `channel`, checks and maps it (§12.1, §12.2), ACKs it.
  // A failed check is answered with ERROR and thrown. The channel must outlive the reader.
  static std::unique_ptr<StreamReader> accept(Channel& channel, Timeout timeout = {}, StreamReaderOptions options = {});
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;
  ~StreamReader() { close(); }

  // The next batch, or nullopt at the end of the stream. ERR_TIMEOUT after `read_timeout`;
  // ERR_PEER_CLOSED once the producer left without ending (after every published record);
  // ERR_RING_INVALID for a malformed record (the producer is told, the reader closes).
  std::optional<StreamBatch> read();

  const std::shared_ptr<arrow::Schema>& schema() const { return schema_; }
  // The start of an IPC stream the batches continue: the Schema and the dictionaries joined with.
  const std::shared_ptr<arrow::Buffer>& prologue() const { return prologue_; }
  const KV& metadata() const { return metadata_; }  // the producer's user metadata
  uint64_t stream_id() const { return stream_id_; }
  bool ended() const { return ended_; }
  uint64_t batches_read() const { return batches_read_; }
  // The ring's data area: batches read from BATCH records lie inside it.
  const uint8_t* data_area() const { return ring_data_ ? ring_data_->data() : nullptr; }
  uint64_t capacity() const { return capacity_; }

  // Unmaps the ring header and closes the eventfds; leaving before the end closes the channel,
  // which is how a consumer tells the producer it left (§12.1). Idempotent.
  void close();

  // Checks what a STREAM_OPEN carries (taking its fds), ACKs it, or answers ERROR and throws.
  static std::unique_ptr<StreamReader> open(Channel& channel, const Frame& frame, std::vector<Fd> fds,
                                            StreamReaderOptions options = {});

 private:
  uint64_t load_write_position();
  std::optional<StreamBatch> read_record(uint64_t write_position);
  StreamBatch decode(const std::shared_ptr<arrow::Buffer>& bytes, uint64_t sequence, uint64_t ticket);
  std::shared_ptr<arrow::Buffer> wait_segment(uint64_t sequence);
  void take_segments();
  void sleep_for_data(const Deadline& deadline);
  [[noreturn]] void broken(const Error& e);
  StreamReader(Channel& channel, const Frame& frame, std::vector<Fd> fds, StreamReaderOptions options);
  Error gone_error() const;

  Channel* channel_;
  StreamReaderOptions options_;
  KV metadata_;
  uint64_t stream_id_ = 0;
  uint32_t slot_ = 0;
  uint64_t capacity_ = 0;
  Mapping header_map_;                       // read-write: positions and flags
  std::shared_ptr<MappedBuffer> ring_data_;  // read-only data area; batches keep it mapped
  std::shared_ptr<MappedBuffer> prologue_segment_;
  std::shared_ptr<arrow::Buffer> prologue_;
  RingHeader header_;
  Fd data_event_, space_event_;
  std::shared_ptr<detail::ReleaseQueue> releases_;
  IpcChecker checker_;  // every message's metadata, before the Arrow reader sees it
  detail::QueueMessageReader* messages_ = nullptr;  // owned by reader_
  std::shared_ptr<arrow::RecordBatchReader> reader_;
  std::shared_ptr<arrow::Schema> schema_;
  std::shared_ptr<detail::DecodePlan> plan_;  // null: every record takes the generic path
  std::map<uint64_t, std::shared_ptr<arrow::Buffer>> segments_;  // EXTERNAL records' segments by sequence
  std::map<uint64_t, Error> segment_errors_;
  uint64_t position_ = 0;   // the next record
  uint64_t published_ = 0;  // the last write_position seen
  uint64_t batches_read_ = 0;
  bool ended_ = false;
  bool closed_ = false;
};

// Sends SUBSCRIBE on a connected channel and opens the stream the publication answers with
// (`validate`: the reader's checks of every batch).
std::unique_ptr<StreamReader> subscribe_on(Channel& channel, const KV& metadata = {}, Timeout timeout = {},
                                           Validate validate = Validate::Bounds);

// ---------------------------------------------------------------------------------------------
// Producer

struct StreamWriterOptions {
  uint64_t capacity_bytes = kDefaultRingCapacity;  // a power of two; batches over a quarter of it get their own segment
  std::optional<uint64_t> max_messages;            // most records not yet released by every reader
  bool fail_when_full = false;                     // ERR_RING_FULL instead of waiting for room
  Timeout write_timeout;                           // waiting for room longer: ERR_TIMEOUT
  uint32_t max_readers = 0;                        // 0: 1 for a channel stream, 62 for a publication
  KV metadata;                                     // sent with STREAM_OPEN
  Timeout attach_timeout = std::chrono::milliseconds(5000);  // for a consumer's ACK
  uint64_t spin_micros = 0;  // ring full: busy-poll the readers' positions this long before sleeping
  // Fault the ring's pages in at creation (about 0.4 ms per MiB) and commit its memory: the first
  // lap around the ring then takes no page fault per 4 KiB (as Python's `prefault`).
  bool prefault = false;
};

class RingProducer {
 public:
  RingProducer(std::shared_ptr<arrow::Schema> schema, StreamWriterOptions options, uint32_t default_readers);
  RingProducer(const RingProducer&) = delete;
  RingProducer& operator=(const RingProducer&) = delete;
  ~RingProducer() { close(); }

  // Attaches `channel` as a consumer (§12.4 step 2); returns once it ACKed the STREAM_OPEN.
  void attach(Channel& channel, uint64_t correlation_id = 0);
  // One BATCH record, or STREAM_SEGMENT + EXTERNAL for a big one (§12.4 step 3).
  void write(const arrow::RecordBatch& batch);
  // The END record (it always waits for room), then waits until every reader released everything or left.
  void end(Timeout timeout = {});
  // Frees the ring, the eventfds and every reader slot. Idempotent.
  void close();

  size_t readers() const { return readers_.size(); }
  // Reads the readers' sockets and detaches those that left.
  void forget_departed();
  const std::shared_ptr<arrow::Schema>& schema() const { return schema_; }
  uint64_t capacity() const { return capacity_; }
  bool closed() const { return closed_; }
  // Hook: a channel stream fails once its one reader left.
  bool fail_without_readers = false;

 private:
  struct Reader {
    Channel* channel;
    Fd data_event;
  };
  void detach(uint32_t slot);
  void detach_departed();
  void poll_readers(bool force);
  void check_readers(bool force);
  uint64_t oldest_held();
  bool fits(uint64_t needed);
  RecordPlacement place(uint64_t length);
  uint64_t reserve(uint64_t length, bool wait);
  void sleep_until(const std::function<bool()>& ready, const Deadline& deadline);
  bool write_in_place(const arrow::RecordBatch& batch);
  void append_record(const std::vector<uint8_t>& payload);
  void publish(uint64_t advance, bool counted);
  void write_header(uint64_t offset, uint32_t length, RecordKind kind, uint64_t sequence, uint64_t ipc_length);
  void send_segment(const std::vector<uint8_t>& payload, uint64_t sequence);

  std::shared_ptr<arrow::Schema> schema_;
  StreamWriterOptions options_;
  uint64_t capacity_;
  uint32_t max_readers_;
  uint64_t stream_id_;
  Fd ring_fd_, space_event_;
  uint8_t* map_ = nullptr;  // the whole ring, read-write
  RingHeader header_;
  uint8_t* data_ = nullptr;
  std::map<uint32_t, Reader> readers_;
  std::optional<Error> reader_failure_;  // why the last reader left (a channel stream reports it)
  uint64_t write_position_ = 0;
  uint64_t sequence_ = 0;
  uint64_t held_from_ = 0;           // the oldest position a reader held when last looked at
  std::deque<uint64_t> unreleased_;  // end positions of published BATCH/EXTERNAL records (with max_messages)
  std::vector<uint8_t> schema_bytes_;
  bool schema_deferred_ = false;  // the writer emits the Schema with the first batch
  bool has_dictionaries_ = false;
  std::vector<uint8_t> dictionary_messages_;  // every dictionary message so far: a joiner's prologue
  std::vector<uint8_t> unsent_dictionaries_;  // emitted for a batch that failed: they go with the next
  std::shared_ptr<detail::BatchEncoder> encoder_;  // null: Arrow's writer writes every batch
  std::shared_ptr<detail::CaptureStream> sink_;
  std::shared_ptr<arrow::ipc::RecordBatchWriter> writer_;
  Clock::time_point next_socket_check_{};
  bool ended_ = false;
  bool closed_ = false;
};

// The writing end of a stream on one channel (the peer reads it with StreamReader::accept).
class StreamWriter {
 public:
  // Sends STREAM_OPEN (correlation 0) and returns once the peer mapped the ring.
  static std::unique_ptr<StreamWriter> open(Channel& channel, std::shared_ptr<arrow::Schema> schema,
                                            StreamWriterOptions options = {});
  void write(const arrow::RecordBatch& batch) { producer_->write(batch); }
  void write(const arrow::Table& table);
  // Ends the stream, waits until the reader released every batch (or left), frees the ring.
  void close(Timeout timeout = {});
  // Frees the ring at once, without an END record, and closes the channel.
  void abort();
  RingProducer& producer() { return *producer_; }

  StreamWriter(std::unique_ptr<RingProducer> producer, Channel& channel)
      : producer_(std::move(producer)), channel_(&channel) {}

 private:
  std::unique_ptr<RingProducer> producer_;
  Channel* channel_;
};

// One producer, up to 62 subscribers joining at any time (§12.4): each batch is in the ring once.
// Subscribers are admitted between writes and while wait_for_subscribers() waits.
class Publication {
 public:
  Publication(const std::string& address, std::shared_ptr<arrow::Schema> schema, StreamWriterOptions options = {});
  Publication(const Publication&) = delete;
  Publication& operator=(const Publication&) = delete;
  ~Publication() { abort(); }

  size_t subscribers();
  void wait_for_subscribers(size_t count, Timeout timeout = {});
  void write(const arrow::RecordBatch& batch);
  // The END record, then waits until every subscriber released everything or left.
  void close(Timeout timeout = {});
  // Stops at once: subscribers see their connection close before an END record.
  void abort();
  const std::string& address() const { return address_; }

 private:
  bool admit(int timeout_ms);

  std::string address_;
  std::unique_ptr<RingProducer> producer_;
  std::unique_ptr<Listener> listener_;
  std::vector<std::unique_ptr<Channel>> channels_;
  bool closed_ = false;
};

}  // namespace arrow_shm
