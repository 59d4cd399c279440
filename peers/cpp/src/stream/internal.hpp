// Shared by the stream files (ring.cpp, consumer.cpp, producer.cpp, publication.cpp): constants of
// §12, eventfds, the §12.3 sleep, STREAM_OPEN fields and the walk over a record's IPC messages.
#pragma once

#include <fcntl.h>
#include <poll.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <arrow/ipc/message.h>

#include "arrow_shm/stream.hpp"
#include "channel_internal.hpp"
#include "ipc_internal.hpp"

namespace arrow_shm::detail {

constexpr int kRingSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
// Longest single sleep: a wake-up lost to a peer without atomics (Python) costs latency only.
constexpr int kSleepBoundMs = 50;
// STREAM_OPEN's own keys: not user metadata.
constexpr const char* kOpenKeys[] = {"stream_id", "reader_slot", "start_position", "capacity"};
bool is_open_key(const std::string& key);

Error ring_invalid(const std::string& m);
// A poll timeout: the deadline's, at most kSleepBoundMs.
int sleep_ms(const Deadline& d);

Fd make_eventfd();
void eventfd_drain(int fd);
// ERR_SEGMENT_INVALID unless `fd` is an eventfd; `what` names it ("data", "space").
void check_eventfd(int fd, const char* what);
// A received eventfd we write: never block on it, even if the peer made it blocking.
void make_nonblocking(int fd);

// §12.3, the waiter's half: set `flag`, re-check `ready`, sleep on `eventfd` and `sockets`
// (at most kSleepBoundMs), drain the eventfd, clear the flag. True when a socket is readable.
bool sleep_on(std::atomic_ref<uint32_t> flag, int eventfd, const std::vector<int>& sockets,
              const std::function<bool()>& ready, const Deadline& d);

// Busy-polls `ready` for up to `micros` µs (the optional spin before a sleep, §12.3).
template <typename Ready>
bool spin_until(uint64_t micros, Ready&& ready) {
  if (micros == 0) return false;
  const auto until = Clock::now() + std::chrono::microseconds(micros);
  for (;;) {
    for (int i = 0; i < 64; i++) {
      if (ready()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (Clock::now() >= until) return false;
  }
}

// How a top-level column of `type` is laid out, for the types the stream codecs handle themselves
// (encoder.cpp, decoder.cpp, as src/stream/encoder.ts): validity + values of `width` bytes each
// (Flat), validity + bits (Bool), validity + offsets of `width` bytes + bytes (Variable).
struct ColumnKind {
  enum Kind { None, Bool, Flat, Variable } kind = None;
  int64_t width = 0;
  int buffers() const { return kind == Variable ? 3 : 2; }
};
ColumnKind column_kind(const arrow::DataType& type);

// A stream's per-schema RecordBatch writer (encoder.cpp): the Message flatbuffer is a template laid
// out once; each batch patches its length, field nodes and buffer regions and copies its buffers
// straight into the ring slot. Null for a schema with a type it does not write.
class BatchEncoder {
 public:
  static std::unique_ptr<BatchEncoder> make(const arrow::Schema& schema);
  // Plans `batch`: the bytes of its encapsulated RecordBatch message, or -1 when the generic
  // writer must write it (a sliced column, a buffer shorter than its length, over 2^31 - 1 rows).
  int64_t measure(const arrow::RecordBatch& batch);
  // Writes the message `measure` planned at `to` (that many bytes), padding zeroed.
  void write(uint8_t* to) const;

 private:
  struct Region {
    const uint8_t* data;
    int64_t size;
  };
  std::vector<ColumnKind> kinds_;
  std::vector<uint8_t> template_;
  int64_t buffers_at_ = 0, body_start_ = 0;
  // The batch `measure` planned (reused from batch to batch).
  int64_t length_ = 0, body_length_ = 0;
  std::vector<int64_t> nodes_;  // (length, null count) per column
  std::vector<Region> buffers_;
};

// A per-stream decode plan (decoder.cpp, as src/stream/decoder.ts): for a schema of flat columns,
// a record holding exactly one plain RecordBatch message is read with bounds checks on every
// flatbuffer offset and its columns made over the ring bytes. Anything else, or anything the
// checks doubt, gives null: the generic path then accepts what it accepts and refuses with its
// own errors, so the plan never accepts what the generic path would refuse.
class DecodePlan {
 public:
  // Null when the schema has a column the plan does not read, or the limits refuse its counts.
  static std::unique_ptr<DecodePlan> make(const std::shared_ptr<arrow::Schema>& schema, const IpcLimits& limits);
  // The batch of one record's bytes, its buffers slices of `bytes`, checked for `validate` when
  // covers(validate) (else the caller runs validate_batch); null: take the generic path.
  std::shared_ptr<arrow::RecordBatch> decode(const std::shared_ptr<arrow::Buffer>& bytes, Validate validate);
  // Whether decode's own checks are those of validate_batch(validate): ValidateFull on these
  // types checks buffer sizes, offsets and null counts, and value rules (dates, times, decimals)
  // are tolerated there; only Full's UTF-8 scan is not done here.
  bool covers(Validate validate) const { return validate != Validate::Full || !has_strings_; }

 private:
  std::shared_ptr<arrow::Schema> schema_;
  std::vector<ColumnKind> kinds_;
  uint64_t buffers_ = 0;
  bool has_strings_ = false;
};

// A decimal u64 field of a frame, or ERR_PROTOCOL naming `frame_name`.
uint64_t decimal(const Frame& f, const std::string& key, const char* frame_name);

// One encapsulated message of a byte range and where it lies in it.
struct Span {
  std::unique_ptr<arrow::ipc::Message> message;
  int64_t start, end;
};
// Walks the encapsulated messages of `bytes` (§7) without copying: each body is a slice of
// `bytes`. Stops at an end-of-stream marker if `eos_ends`, else refuses it. A peer's bytes go
// through `checker` first (§14.1); null for this side's own.
std::vector<Span> read_messages(const std::shared_ptr<arrow::Buffer>& bytes, bool eos_ends, IpcChecker* checker);

}  // namespace arrow_shm::detail
