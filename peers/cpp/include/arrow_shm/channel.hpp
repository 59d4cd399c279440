// arrow-shm C++ library: one connection that sends and receives Arrow tables through sealed
// memfd segments (docs/PROTOCOL.md §4-§9). Received tables are zero copy: their columns point
// into the received mapping, which stays mapped exactly as long as anything references it.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <sys/socket.h>

#include <arrow/buffer.h>
#include <arrow/table.h>

#include "arrow_shm.hpp"

namespace arrow_shm {

// A whole received segment mapping, exposed as the IPC bytes [offset, offset + length) of it.
// Arrow slices of this buffer keep it alive; the last reference unmaps the segment.
class MappedBuffer : public arrow::Buffer {
 public:
  MappedBuffer(Mapping mapping, uint64_t offset, uint64_t length)
      : arrow::Buffer(mapping.data() + offset, static_cast<int64_t>(length)), mapping_(std::move(mapping)) {}
  // The whole mapping (the segment), e.g. to check that a column lies inside it.
  const uint8_t* mapping_data() const { return mapping_.data(); }
  size_t mapping_size() const { return mapping_.size(); }

 private:
  Mapping mapping_;  // munmap in its destructor
};

// Decodes an IPC stream without copying: the table's buffers are slices of `ipc`.
// Throws ERR_IPC_TRUNCATED / ERR_IPC_INVALID / ERR_IPC_UNSUPPORTED.
std::shared_ptr<arrow::Table> decode_table(const std::shared_ptr<arrow::Buffer>& ipc);

// One received TABLE, already checked (§5.1, §7) and acknowledged.
struct ReceivedTable {
  uint64_t message_id = 0;
  uint8_t flags = 0;
  KV metadata;
  // The IPC stream bytes: a MappedBuffer over the segment, or (an INLINE table, §5.3) this side's
  // own copy, 64-byte aligned.
  std::shared_ptr<arrow::Buffer> ipc;
  bool is_inline() const { return flags & kInline; }
  StreamInfo info;                    // schema line, row/batch counts, or the unsupported type
  bool is_request() const { return flags & kRequest; }
  // Decodes the bytes again on each call (cheap: no copy, the columns point into `ipc`).
  std::shared_ptr<arrow::Table> table() const { return decode_table(ipc); }
  // A table store's get answer (§15.5): the store holds that version until the last copy of this
  // handle goes, or close(), which sends RELEASE. Empty for a channel's tables.
  std::shared_ptr<void> hold;
  // Ends the hold now; the bytes and columns stay readable (the segment is sealed).
  void close() { hold.reset(); }
};

using Timeout = std::optional<std::chrono::milliseconds>;  // nullopt = wait forever

struct ChannelOptions {
  bool allow_unsealed = false;  // accept segments without seals (§6.3)
  bool receives_tables = true;  // false: refuse incoming non-response tables (ERR_IPC_UNSUPPORTED)
  bool receives_streams = true;  // false: refuse STREAM_OPEN (ERR_INVALID_ARGUMENT) instead of queueing it
  IpcLimits ipc_limits;          // §14.1, for every received table
  Validate validate = Validate::Bounds;                  // checks after decoding (arrow_shm.hpp)
  uint64_t max_message_bytes = kDefaultMaxMessageBytes;  // largest ipc_length received (told in WELCOME)
  // §5.3: a table whose IPC stream fits in its frame and is at most this many bytes goes inline to
  // a peer that listed `inline`; 0 = never (Node's maxInlineBytes).
  uint64_t max_inline_bytes = kMaxFrameBytes;
  // §14.2: received tables not yet taken by receive_message(): past either bound the socket is
  // not read until the application takes one (the sender's sends then wait for their ACK).
  size_t max_inbox_messages = 64;
  uint64_t max_inbox_bytes = 1ull << 30;  // their mapped ipc_length
  size_t max_stream_offers = 16;          // STREAM_OPEN offers not yet accepted; more: ERR_RESOURCE_LIMIT
};

class StreamReader;
class RingProducer;
class Publication;
class StoreLink;

class Channel {
 public:
  // Connects to a listening peer and performs the HELLO/WELCOME handshake (§4).
  static std::unique_ptr<Channel> connect(const std::string& addr, Timeout timeout = {}, ChannelOptions options = {});
  // Wraps an accepted (or socketpair) SOCK_SEQPACKET socket and answers its HELLO.
  static std::unique_ptr<Channel> accept(Fd socket, Timeout timeout = {}, ChannelOptions options = {});
  // Wraps a connected socket and sends HELLO (the connecting side of a socketpair).
  static std::unique_ptr<Channel> handshake(Fd socket, Timeout timeout = {}, ChannelOptions options = {});

  // A connected socket before its handshake: use the factories above.
  Channel(Fd socket, ChannelOptions options) : fd_(std::move(socket)), options_(options) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel() { close(); }

  // Sends a table (written into a new sealed segment) and waits for its ACK; returns its id.
  uint64_t send(const arrow::Table& table, const KV& metadata = {}, Timeout timeout = {});
  // Sends `ipc_length` bytes of IPC stream held by `segment` (ownership passes to the peer).
  uint64_t send_segment(Fd segment, uint64_t ipc_length, const KV& metadata = {}, Timeout timeout = {});
  // Sends a stream of stream_from_table / stream_from_file_bytes (made with max_inline =
  // inline_room(metadata)): inline or in its segment. Waits for the ACK; returns the id.
  uint64_t send_stream(OutgoingStream stream, const KV& metadata = {}, Timeout timeout = {});
  // The largest IPC stream a TABLE with `metadata` carries inline to this peer (§5.3): 0 unless
  // the peer listed `inline` and max_inline_bytes > 0.
  uint64_t inline_room(const KV& metadata) const;

  // The next table sent to this side (zero copy). Throws ERR_PEER_CLOSED once the peer has gone,
  // or the table's typed error if it failed the checks (the sender got an ERROR; still open).
  std::shared_ptr<arrow::Table> receive(Timeout timeout = {});
  // The same with the frame's id, flags and metadata; nullopt once the peer said GOODBYE or hung up.
  std::optional<ReceivedTable> receive_message(Timeout timeout = {});

  // §8: sends `table` as a REQUEST and returns the RESPONSE table (or throws the peer's ERROR).
  std::shared_ptr<arrow::Table> request(const arrow::Table& table, Timeout timeout = {}, const KV& metadata = {});
  void respond(const ReceivedTable& request, const arrow::Table& response, const KV& metadata = {}, Timeout timeout = {});
  void respond_error(const ReceivedTable& request, const Error& error);
  // Answers requests with `handler` until the peer hangs up or `count` were answered; an Error
  // the handler throws goes back as an ERROR, any other exception as ERR_REMOTE. Returns the count.
  using Handler = std::function<std::shared_ptr<arrow::Table>(const ReceivedTable&)>;
  uint64_t serve(const Handler& handler, std::optional<uint64_t> count = std::nullopt);

  // Sends GOODBYE and closes (idempotent).
  void close();
  bool is_open() const { return static_cast<bool>(fd_); }
  uint64_t peer_max_message_bytes() const { return peer_max_message_bytes_; }
  // What the peer listed in its HELLO/WELCOME (§4), and its pid (0 if it sent none).
  bool peer_has_capability(const std::string& name) const;
  uint32_t peer_pid() const { return peer_pid_; }

  // Handles the frames already waiting on the socket, after waiting up to `timeout_ms` for the
  // first (streams call this while they sleep). Returns false once the peer has gone.
  bool pump(int timeout_ms);
  // The peer hung up, said GOODBYE or failed the connection (then `failure()` says how).
  bool peer_gone() const { return peer_gone_ || !fd_; }
  const std::optional<Error>& failure() const { return failure_; }
  // The socket, for poll(2) next to other fds; -1 once closed.
  int native_handle() const { return fd_.get(); }
  // A received table (or its typed error) waits in the inbox: receive_message() returns at once.
  bool has_message() const { return !inbox_.empty(); }
  // The inbox is at max_inbox_messages / max_inbox_bytes: the socket is not read meanwhile.
  bool inbox_full() const;
  // When a frame last went in either direction (idle_timeout_ms of §14.2).
  Clock::time_point last_activity() const { return last_activity_; }
  // Ends the connection with ERROR `e` (correlation_id 0) and no GOODBYE, e.g. an idle one (§14.2).
  void fail(const Error& e);

 private:
  friend class StreamReader;
  friend class RingProducer;
  friend class Publication;
  friend class StoreLink;  // a table store's client: its own HELLO, frames and held answers (§15)
  friend std::unique_ptr<StreamReader> subscribe_on(Channel& channel, const KV& metadata, Timeout timeout,
                                                    Validate validate);
  struct Received {
    Frame frame;
    std::vector<Fd> fds;
    std::shared_ptr<arrow::Buffer> inline_ipc;  // an INLINE TABLE's stream, copied out of the frame
  };
  uint64_t send_frame(Frame f, int pass_fd = -1);
  uint64_t send_frame_fds(Frame f, const std::vector<int>& fds, bool nonblocking = false,
                          const std::vector<uint8_t>* inline_ipc = nullptr);
  void send_control(Frame f);
  void send_error(const Error& e, uint64_t correlation_id, uint8_t flags = 0);
  [[noreturn]] void fatal(const Error& e);
  std::optional<Received> read_frame(const Deadline& d);
  void handshake_as_connector(const Deadline& d);
  void handshake_as_listener(const Deadline& d);
  void take_peer_info(const Frame& f);
  // `held`: a table store's get answer, LEASED but checked with the sealed policy (§15.3).
  ReceivedTable accept_table(Received& r, bool held = false);
  uint64_t send_table(OutgoingStream stream, const KV& metadata, uint8_t flags, uint64_t correlation_id);
  void await_ack(uint64_t id, const Deadline& d);
  // Handles a frame the caller does not wait for; returns false if it was GOODBYE.
  bool handle_other(Received& r);

  Fd fd_;
  ChannelOptions options_;
  uint64_t next_id_ = 1;
  // What HELLO/WELCOME list: streams (§12), inline tables (§5.3); no "lease". A store client: "store".
  std::string capabilities_ = "stream,inline";
  bool handshaken_ = false;
  bool peer_gone_ = false;
  std::optional<Error> failure_;
  std::vector<std::string> peer_capabilities_;
  uint32_t peer_pid_ = 0;
  // §12: STREAM_OPEN offers not taken yet, STREAM_SEGMENTs for the open stream reader, and
  // SUBSCRIBE requests for a publication (only queued while accepts_subscribe_).
  std::deque<Received> stream_offers_;
  std::deque<Received> stream_segments_;
  std::deque<Frame> subscribe_requests_;
  bool stream_reader_open_ = false;
  bool accepts_subscribe_ = false;
  uint64_t peer_max_message_bytes_ = kDefaultMaxMessageBytes;
  // Tables that arrived while this side waited for something else (already ACKed, or the typed
  // error their sender was told), handed out in order by receive_message().
  struct Incoming {
    std::optional<ReceivedTable> message;
    std::optional<Error> error;
  };
  std::deque<Incoming> inbox_;
  uint64_t inbox_bytes_ = 0;
  Clock::time_point last_activity_ = Clock::now();
};

// A listening SOCK_SEQPACKET socket (a path, chmod 0600, or "@name": abstract); the socket file
// is removed by the destructor.
class Listener {
 public:
  explicit Listener(std::string addr) : addr_(std::move(addr)), fd_(listen_socket(addr_, SOCK_SEQPACKET, &file_)) {}
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener() { unlink_socket(file_); }
  // Waits for the next peer and answers its handshake.
  std::unique_ptr<Channel> accept(Timeout timeout = {}, ChannelOptions options = {});
  const std::string& address() const { return addr_; }
  int native_handle() const { return fd_.get(); }  // to poll for a waiting connection

 private:
  std::string addr_;
  SocketFile file_;  // before fd_: listen_socket fills it
  Fd fd_;
};

}  // namespace arrow_shm
