// arrow-shm C++ peer: frames, sockets, segments and IPC checks (docs/PROTOCOL.md).
// The connection-level API is arrow_shm/channel.hpp.
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace arrow {
class Table;
}

namespace arrow_shm {

// One typed error; `code` is a PROTOCOL.md §9 code.
class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

[[noreturn]] void throw_errno(const char* syscall, int err);

// Owning file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;
Deadline deadline_after_ms(std::optional<int64_t> ms);
int poll_timeout_ms(const Deadline& d);  // -1 = forever

constexpr uint64_t kDefaultMaxMessageBytes = 16ull << 30;
constexpr uint64_t kSeedSegmentBytes = 40960;
constexpr const char* kDefaultSeedSocket = "/tmp/memfd_socket";
constexpr const char* kImplementation = "arrow-shm-cpp/0.1.0";

// ---- frames (§3) ----
enum class Kind : uint8_t {
  Hello = 1, Welcome, Table, Ack, Release, Error, Goodbye,
  StreamOpen, StreamSegment, Subscribe,  // §12.1, capability "stream"
  Store                                   // §15.1, capability "store" (this side is no store)
};
constexpr uint8_t kMaxKind = static_cast<uint8_t>(Kind::Store);
// Error codes added for streams (§12.4); the others are spelled out where they are thrown.
constexpr const char* kErrRingFull = "ERR_RING_FULL";
constexpr const char* kErrNoReaderSlot = "ERR_NO_READER_SLOT";
constexpr const char* kErrRingInvalid = "ERR_RING_INVALID";
// Limits (§14): a decoding limit, a resource limit of the receiver, a live listener on the path.
constexpr const char* kErrIpcLimit = "ERR_IPC_LIMIT";
constexpr const char* kErrResourceLimit = "ERR_RESOURCE_LIMIT";
constexpr const char* kErrAddressInUse = "ERR_ADDRESS_IN_USE";
// Table store (§15.7): no such name (or watch); a put without replace of a name that exists.
constexpr const char* kErrNotFound = "ERR_NOT_FOUND";
constexpr const char* kErrExists = "ERR_EXISTS";
// kInline (§5.3): a TABLE whose IPC stream is inside the frame, at ipc_offset = inline_offset().
enum Flags : uint8_t { kLeased = 1, kRequest = 2, kResponse = 4, kInline = 8 };
constexpr uint32_t kHeaderLength = 64;
constexpr size_t kMaxFrameBytes = 65536;
// Where an INLINE TABLE's stream starts: after the header and metadata, 8-aligned (§5.3).
constexpr uint64_t inline_offset(uint64_t metadata_length) { return (kHeaderLength + metadata_length + 7) & ~uint64_t{7}; }

using KV = std::vector<std::pair<std::string, std::string>>;  // insertion order kept

struct Frame {
  Kind kind = Kind::Goodbye;
  uint16_t version = 1;
  uint8_t flags = 0;
  uint64_t message_id = 0;
  uint64_t correlation_id = 0;
  uint64_t ipc_offset = 0;
  uint64_t ipc_length = 0;
  uint32_t fd_count = 0;
  KV metadata;
  std::optional<std::string> get(const std::string& key) const;
};

// `inline_ipc` (with kInline): the IPC stream written after the metadata at inline_offset(), which
// sets ipc_offset/ipc_length (§5.3).
std::vector<uint8_t> encode_frame(const Frame& f, const uint8_t* inline_ipc = nullptr, size_t inline_length = 0);
// Throws fatal ERR_PROTOCOL. An INLINE TABLE's stream is [ipc_offset, n) of `data` (checked: §5.3).
Frame decode_frame(const uint8_t* data, size_t n);
// The size of the key/value block encode_frame writes for `metadata`.
size_t metadata_bytes(const KV& metadata);

// ---- sockets (§2) ----
// A socket file this process bound: unlinked on close only if the path is still that file (§14.2).
struct SocketFile {
  std::string path;  // empty for an abstract address
  uint64_t dev = 0, ino = 0;
};
// bind, chmod 0600, listen. A live listener on the path is ERR_ADDRESS_IN_USE; a stale socket
// file (nobody answers) is replaced. `bound` receives the file's identity.
Fd listen_socket(const std::string& addr, int type, SocketFile* bound = nullptr);
void unlink_socket(const SocketFile& file);
Fd accept_socket(int listen_fd, const Deadline& d);
Fd connect_socket(const std::string& addr, int type, const Deadline& d);
uint32_t peer_uid(int fd);
// Waits until `fd` is readable; ERR_TIMEOUT ("timed out waiting for <what>") at the deadline.
void wait_readable(int fd, const Deadline& d, const char* what);
// recvmsg with SCM_RIGHTS: bytes read (0 = peer closed), the fds received, and msg_flags.
size_t recv_with_fds(int sock, uint8_t* buf, size_t cap, std::vector<Fd>& fds, int& msg_flags);
// sendmsg of one datagram with an optional fd (-1: none); ERR_PEER_CLOSED if the peer hung up.
void send_with_fd(int sock, const void* data, size_t n, int pass_fd);
// The same with any number of fds (STREAM_OPEN carries 4). `nonblocking`: a full socket buffer
// (the peer does not read) is ERR_RESOURCE_LIMIT instead of a wait.
void send_with_fds(int sock, const void* data, size_t n, const std::vector<int>& pass_fds, bool nonblocking = false);

// ---- segments (§5, §6) ----
// Creates a memfd of max(length, min_size) bytes holding `length` bytes produced by `fill`
// (called with a writable mapping), and optionally seals it.
Fd make_segment(uint64_t length, uint64_t min_size, bool seal,
                const std::function<void(uint8_t*, uint64_t)>& fill);

// A read-only mapping of a whole received segment.
class Mapping {
 public:
  Mapping() = default;
  Mapping(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(Mapping&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~Mapping() { reset(); }
  void reset();
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  const uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

// §5.1 steps 2-6. to_end: ipc_length is "to the end of the file" (seed mode) and is filled in.
Mapping open_segment(int fd, uint64_t ipc_offset, uint64_t& ipc_length, bool allow_unsealed,
                     uint64_t max_message_bytes = kDefaultMaxMessageBytes, bool to_end = false);

// ---- Arrow IPC (§7) ----
struct StreamInfo {
  uint64_t end = 0;  // bytes up to and including the end-of-stream marker
  std::string schema;   // "a: int64, b: string"
  int64_t rows = 0;
  int num_columns = 0;
  int64_t batches = 0;
  std::optional<Error> unsupported;  // valid framing, but a type Arrow C++ cannot decode
};
// §14.1 decoding limits, per IPC message, each reference counted separately (ERR_IPC_LIMIT).
struct IpcLimits {
  uint64_t max_metadata_bytes = 64ull << 20;  // strings and vectors reachable from the Message
  uint64_t max_metadata_entries = 65536;      // KeyValue entries (Message, Schema, Fields)
  uint64_t max_fields = 65536;                // Field tables of a Schema, children included
  uint32_t max_nesting_depth = 64;            // tables nested in each other (the Message is 0)
};

// The checks of every message's flatbuffer metadata before Arrow C++ decodes it (§7, §14.1):
// bounds, the decoding limits, and the node/buffer/variadic counts the stream's schema fixes.
// One checker follows one stream (it keeps the schema's layout and the dictionary ids).
class IpcChecker {
 public:
  explicit IpcChecker(IpcLimits limits = {}) : limits_(limits) {}
  // The encapsulated messages of [data, data + length) up to an end-of-stream marker (included)
  // or the end; returns where they end. Throws ERR_IPC_LIMIT / _INVALID / _TRUNCATED / _UNSUPPORTED.
  uint64_t check_messages(const uint8_t* data, uint64_t length);
  // One Message flatbuffer; returns its body length.
  int64_t check_message(const uint8_t* metadata, size_t length);
  // What a RecordBatch holds for some fields: nodes, buffers (V5), union fields, view fields.
  struct Layout {
    uint64_t nodes = 0, buffers = 0, unions = 0, views = 0;
  };

 private:
  IpcLimits limits_;
  bool have_schema_ = false;
  Layout batch_;
  std::map<int64_t, Layout> dictionaries_;  // dictionary id -> its value field's layout
};

// What a received table is checked for after decoding (option `validate`, the same names in every
// peer). Before decoding, the IPC framing and every buffer's bounds are always checked (§7).
//   Bounds (default): Arrow's ValidateFull on a zero-copy view of each column in which utf8 /
//     large_utf8 / string_view (nested too) are binary / large_binary / binary_view: offsets,
//     sizes, dictionary indices, run ends, union ids and views are all checked, so Arrow C++
//     kernels cannot read out of bounds; only the O(bytes) UTF-8 scan is skipped.
//   Full: that scan too (every string is valid UTF-8).
//   Framing: nothing after decoding: for trusted senders only.
enum class Validate { Bounds, Full, Framing };
Validate parse_validate(const std::string& name);  // "bounds" | "full" | "framing", else ERR_INVALID_ARGUMENT
const char* validate_name(Validate validate);

// Validates (zero copy) and summarises an IPC stream; throws ERR_IPC_LIMIT / ERR_IPC_TRUNCATED /
// ERR_IPC_INVALID.
StreamInfo validate_stream(const uint8_t* data, uint64_t length, const IpcLimits& limits = {},
                           Validate validate = Validate::Bounds);
// An IPC stream to send: in a new segment, or in memory when it is at most `max_inline` bytes
// (it then travels inside its TABLE frame, §5.3).
struct OutgoingStream {
  Fd segment;                  // empty for an inline stream
  std::vector<uint8_t> bytes;  // the inline stream
  uint64_t length = 0;         // ipc_length
  bool is_inline() const { return !segment; }
};
// Input file bytes -> IPC stream to send: streams unchanged, ARROW1 files re-framed (alignment 64).
// A segment is max(length, min_size) bytes, sealed if `seal`.
OutgoingStream stream_from_file_bytes(const std::vector<uint8_t>& bytes, uint64_t min_size, bool seal,
                                      uint64_t max_inline = 0);
// A table written as an IPC stream (alignment 64), a segment one sealed.
OutgoingStream stream_from_table(const arrow::Table& table, uint64_t max_inline = 0);

}  // namespace arrow_shm
