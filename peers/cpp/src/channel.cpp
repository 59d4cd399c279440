// One connection: handshake, TABLE/ACK/ERROR/GOODBYE and request/response (PROTOCOL §4-§9).
#include "arrow_shm/channel.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <poll.h>
#include <unistd.h>

#include "channel_internal.hpp"
#include "ipc_internal.hpp"

namespace arrow_shm {

namespace {

std::vector<std::string> split_capabilities(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    std::string item = list.substr(start, comma - start);
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
    start = comma + 1;
  }
  return out;
}

}  // namespace

// A handshake number (§4): "0" or [1-9][0-9]*, at most `digits` digits (no sign, 0x, exponent,
// space or empty string, which std::stoull would take); nullopt otherwise.
std::optional<uint64_t> strict_decimal(const std::optional<std::string>& text, size_t digits) {
  if (!text || text->empty() || text->size() > digits || text->find_first_not_of("0123456789") != std::string::npos ||
      ((*text)[0] == '0' && text->size() > 1))
    return std::nullopt;
  try {
    return std::stoull(*text);
  } catch (const std::out_of_range&) {  // 20 digits over 2^64
    return std::nullopt;
  }
}

namespace {

constexpr size_t kMaxQueuedStreamSegments = 256;

constexpr int kMaxFramesPerPump = 256;

bool carries_fds(Kind kind) {
  return kind == Kind::Table || kind == Kind::StreamOpen || kind == Kind::StreamSegment;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Opening

std::unique_ptr<Channel> Channel::connect(const std::string& addr, Timeout timeout, ChannelOptions options) {
  auto ch = std::make_unique<Channel>(connect_socket(addr, SOCK_SEQPACKET, deadline_of(timeout)), options);
  ch->handshake_as_connector(deadline_of(timeout));
  return ch;
}

std::unique_ptr<Channel> Channel::accept(Fd socket, Timeout timeout, ChannelOptions options) {
  auto ch = std::make_unique<Channel>(std::move(socket), options);
  ch->handshake_as_listener(deadline_of(timeout));
  return ch;
}

std::unique_ptr<Channel> Channel::handshake(Fd socket, Timeout timeout, ChannelOptions options) {
  auto ch = std::make_unique<Channel>(std::move(socket), options);
  ch->handshake_as_connector(deadline_of(timeout));
  return ch;
}

std::unique_ptr<Channel> Listener::accept(Timeout timeout, ChannelOptions options) {
  return Channel::accept(accept_socket(fd_.get(), deadline_of(timeout)), timeout, options);
}

void Channel::handshake_as_connector(const Deadline& d) {
  if (peer_uid(fd_.get()) != ::geteuid()) {
    fd_.reset();
    throw Error("ERR_PEER_CREDENTIALS", "the peer's uid is not allowed");
  }
  Frame hello;
  hello.kind = Kind::Hello;
  hello.metadata = {{"min_version", "1"},
                    {"max_version", "1"},
                    {"capabilities", capabilities_},
                    {"implementation", kImplementation},
                    {"pid", std::to_string(::getpid())}};
  send_frame(hello);
  auto r = read_frame(d);
  if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up during the handshake");
  const Frame& f = r->frame;
  if (f.kind == Kind::Error) {
    fd_.reset();
    throw remote_error(f, "handshake refused");
  }
  if (f.kind != Kind::Welcome || !r->fds.empty()) fatal(Error("ERR_PROTOCOL", "expected WELCOME"));
  const auto version = strict_decimal(f.get("version"));
  if (!version) fatal(Error("ERR_PROTOCOL", "WELCOME lacks a decimal version"));
  if (f.version != 1 || *version != 1) fatal(Error("ERR_PROTOCOL_VERSION", "the listener chose an unknown version"));
  if (auto m = f.get("max_message_bytes")) {
    auto bytes = strict_decimal(m, 20);
    if (!bytes) fatal(Error("ERR_PROTOCOL", "bad max_message_bytes in WELCOME"));
    peer_max_message_bytes_ = *bytes;
  }
  take_peer_info(f);
  handshaken_ = true;
}

void Channel::handshake_as_listener(const Deadline& user) {
  if (peer_uid(fd_.get()) != ::geteuid()) {
    send_error(Error("ERR_PEER_CREDENTIALS", "peer uid not allowed"), 0);
    fd_.reset();
    throw Error("ERR_PEER_CREDENTIALS", "the peer's uid is not allowed");
  }
  // A connected peer gets 5 s to say HELLO, whatever the caller's timeout.
  Deadline d = Clock::now() + std::chrono::seconds(5);
  if (user && *user < *d) d = user;
  auto r = read_frame(d);
  if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up before HELLO");
  const Frame& f = r->frame;
  if (f.kind != Kind::Hello || !r->fds.empty()) fatal(Error("ERR_PROTOCOL", "expected HELLO"));
  const auto lo = strict_decimal(f.get("min_version")), hi = strict_decimal(f.get("max_version"));
  if (!lo || !hi) fatal(Error("ERR_PROTOCOL", "HELLO lacks a decimal min_version/max_version"));
  if (*lo > 1 || *hi < 1) fatal(Error("ERR_PROTOCOL_VERSION", "no common protocol version (this side speaks 1)"));
  take_peer_info(f);
  Frame welcome;
  welcome.kind = Kind::Welcome;
  welcome.metadata = {{"version", "1"},
                      {"capabilities", capabilities_},
                      {"implementation", kImplementation},
                      {"pid", std::to_string(::getpid())},
                      {"max_message_bytes", std::to_string(options_.max_message_bytes)}};
  send_frame(welcome);
  handshaken_ = true;
}

// The peer's capabilities and pid from its HELLO/WELCOME; a pid, if given, is a strict decimal.
void Channel::take_peer_info(const Frame& f) {
  peer_capabilities_ = split_capabilities(f.get("capabilities").value_or(""));
  if (auto pid = f.get("pid")) {
    auto value = strict_decimal(pid);
    if (!value) fatal(Error("ERR_PROTOCOL", "the peer's pid '" + pid->substr(0, 32) + "' is not a decimal number"));
    peer_pid_ = static_cast<uint32_t>(*value);
  }
}

void Channel::close() {
  if (!fd_) return;
  Frame bye;
  bye.kind = Kind::Goodbye;
  try {
    send_frame(bye);
  } catch (const Error&) {
  }
  fd_.reset();
}

// ---------------------------------------------------------------------------------------------
// Frames

uint64_t Channel::send_frame(Frame f, int pass_fd) {
  std::vector<int> fds;
  if (pass_fd >= 0) fds.push_back(pass_fd);
  return send_frame_fds(std::move(f), fds);
}

uint64_t Channel::send_frame_fds(Frame f, const std::vector<int>& fds, bool nonblocking,
                                 const std::vector<uint8_t>* inline_ipc) {
  if (!fd_) throw Error("ERR_CLOSED", "the channel is closed");
  f.message_id = next_id_++;
  auto bytes = inline_ipc ? encode_frame(f, inline_ipc->data(), inline_ipc->size()) : encode_frame(f);
  send_with_fds(fd_.get(), bytes.data(), bytes.size(), fds, nonblocking);
  last_activity_ = Clock::now();
  return f.message_id;
}

// An ACK or ERROR written while handling the peer's frames never blocks: a peer that leaves its
// socket unread until the buffer is full loses the connection instead of stalling this side.
void Channel::send_control(Frame f) {
  try {
    send_frame_fds(std::move(f), {}, /*nonblocking=*/true);
  } catch (const Error& e) {
    if (e.code() == kErrResourceLimit) {
      if (!failure_) failure_ = e;
      peer_gone_ = true;
      fd_.reset();
    }
    throw;
  }
}

bool Channel::inbox_full() const {
  return inbox_.size() >= options_.max_inbox_messages || inbox_bytes_ >= options_.max_inbox_bytes;
}

void Channel::fail(const Error& e) {
  if (!fd_) return;
  send_error(e, 0);
  if (!failure_) failure_ = e;
  peer_gone_ = true;
  fd_.reset();
}

bool Channel::peer_has_capability(const std::string& name) const {
  for (auto& c : peer_capabilities_)
    if (c == name) return true;
  return false;
}

bool Channel::pump(int timeout_ms) {
  // At most kMaxFramesPerPump frames a call: a peer that keeps its frames coming cannot hold the
  // caller here (a server polls many channels).
  for (int frames = 0; fd_ && !peer_gone_ && !inbox_full() && frames < kMaxFramesPerPump; frames++) {
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("poll", errno);
    if (r == 0) return true;
    timeout_ms = 0;  // then only what is already there
    try {
      auto frame = read_frame(Clock::now());
      if (!frame) return false;  // hung up
      handle_other(*frame);
    } catch (const Error& e) {
      // A fatal frame, or the peer's ERROR about the connection: it is over.
      if (!failure_) failure_ = e;
      peer_gone_ = true;
      return false;
    }
  }
  return !peer_gone();
}

void Channel::send_error(const Error& e, uint64_t correlation_id, uint8_t flags) {
  Frame f;
  f.kind = Kind::Error;
  f.flags = flags;
  f.correlation_id = correlation_id;
  f.metadata = {{"code", e.code()}, {"message", std::string(e.what()).substr(0, 4096)}};
  try {
    send_control(f);
  } catch (const Error&) {
  }
}

// A frame-level failure (§9): ERROR with correlation_id 0 if possible, close, throw.
void Channel::fatal(const Error& e) {
  if (fd_) send_error(e, 0);
  fd_.reset();
  throw e;
}

std::optional<Channel::Received> Channel::read_frame(const Deadline& d) {
  if (!fd_) return std::nullopt;
  // §14.2: the socket waits while the inbox is full. This side is single-threaded, so waiting
  // here for anything else could only end at the deadline: say so at once.
  if (inbox_full())
    throw Error(kErrResourceLimit, std::to_string(inbox_.size()) +
                                       " received tables wait for receive_message() (max_inbox_messages / "
                                       "max_inbox_bytes): take them first");
  wait_readable(fd_.get(), d, "the peer");
  // One buffer per thread, not per frame or channel: nothing received points into it afterwards
  // (an INLINE stream is copied out below).
  thread_local std::vector<uint8_t> buf(kMaxFrameBytes);
  Received r;
  int flags = 0;
  size_t n = recv_with_fds(fd_.get(), buf.data(), buf.size(), r.fds, flags);
  if (n == 0 && r.fds.empty()) {
    fd_.reset();
    return std::nullopt;
  }
  last_activity_ = Clock::now();
  if (flags & MSG_TRUNC) fatal(Error("ERR_PROTOCOL", "frame larger than 65536 bytes (MSG_TRUNC)"));
  if (flags & MSG_CTRUNC) fatal(Error("ERR_PROTOCOL", "too many file descriptors (MSG_CTRUNC)"));
  try {
    r.frame = decode_frame(buf.data(), n);
  } catch (const Error& e) {
    fatal(e);
  }
  if (handshaken_ && r.frame.version != 1)
    fatal(Error("ERR_PROTOCOL_VERSION", "frame of version " + std::to_string(r.frame.version) + ", agreed 1"));
  if (r.frame.flags & kInline) {
    // decode_frame checked that [ipc_offset, n) is the stream; this side's copy, 64-byte aligned.
    auto copy = unwrap(arrow::AllocateBuffer(static_cast<int64_t>(r.frame.ipc_length)));
    std::memcpy(copy->mutable_data(), buf.data() + r.frame.ipc_offset, r.frame.ipc_length);
    r.inline_ipc = std::move(copy);
  }
  return r;
}

bool Channel::handle_other(Received& r) {
  const Frame& f = r.frame;
  if (!carries_fds(f.kind) && !r.fds.empty())
    fatal(Error("ERR_PROTOCOL", "file descriptors attached to a frame that carries none"));
  switch (f.kind) {
    // Queued stream frames hold fds: a peer cannot queue without bound (one stream at a time, §12).
    case Kind::StreamOpen:
      if (!options_.receives_streams) {
        r.fds.clear();
        send_error(Error("ERR_INVALID_ARGUMENT", "this side receives no stream"), f.message_id);
      } else if (stream_offers_.size() >= options_.max_stream_offers) {
        r.fds.clear();
        send_error(Error(kErrResourceLimit, "more STREAM_OPEN offers than max_stream_offers wait to be accepted"),
                   f.message_id);
      } else {
        stream_offers_.push_back(std::move(r));
      }
      return true;
    case Kind::StreamSegment:
      if (!stream_reader_open_ || stream_segments_.size() >= kMaxQueuedStreamSegments) {
        r.fds.clear();
        send_error(Error("ERR_PROTOCOL", stream_reader_open_ ? "too many STREAM_SEGMENTs ahead of their records"
                                                              : "STREAM_SEGMENT without an open stream"),
                   f.message_id);
      } else {
        stream_segments_.push_back(std::move(r));
      }
      return true;
    case Kind::Subscribe:
      if (accepts_subscribe_) subscribe_requests_.push_back(f);
      else send_error(Error("ERR_INVALID_ARGUMENT", "this side publishes no stream"), f.message_id);
      return true;
    case Kind::Table:
      if (f.flags & kResponse) {  // a late response to a request that timed out: ACK and drop
        try {
          accept_table(r);
        } catch (const Error&) {
        }
      } else if (!options_.receives_tables) {
        send_error(Error("ERR_IPC_UNSUPPORTED", "this side does not receive tables"), f.message_id);
      } else {
        try {
          ReceivedTable m = accept_table(r);
          inbox_bytes_ += static_cast<uint64_t>(m.ipc->size());
          inbox_.push_back({std::move(m), std::nullopt});
        } catch (const Error& e) {
          if (fd_) inbox_.push_back({std::nullopt, e});  // else the connection failed: failure() says why
        }
      }
      return true;
    case Kind::Error:
      if (f.correlation_id == 0) throw remote_error(f, "the peer failed");
      return true;  // about a message nobody waits for any more
    case Kind::Hello:
    case Kind::Welcome:
      fatal(Error("ERR_PROTOCOL", "handshake frame after the handshake"));
    case Kind::Store:  // only between sides that listed "store" (§15.1): this side is no store
      fatal(Error("ERR_PROTOCOL", "unexpected STORE frame after the handshake"));
    case Kind::Goodbye:
      peer_gone_ = true;
      if (!failure_) failure_ = Error("ERR_PEER_CLOSED", "the peer said GOODBYE");
      return false;
    default:  // ACK / RELEASE of nothing pending
      return true;
  }
}

// ---------------------------------------------------------------------------------------------
// Sending

uint64_t Channel::send_table(OutgoingStream stream, const KV& metadata, uint8_t flags, uint64_t correlation_id) {
  if (stream.length > peer_max_message_bytes_)
    throw Error("ERR_TOO_LARGE", "IPC stream of " + std::to_string(stream.length) +
                                     " bytes exceeds the peer's max_message_bytes");
  Frame table;
  table.kind = Kind::Table;
  table.flags = flags;
  table.correlation_id = correlation_id;
  table.metadata = metadata;
  if (stream.is_inline()) {  // §5.3: encode_frame places it and sets ipc_offset / ipc_length
    if (stream.length > inline_room(metadata)) throw Error("ERR_INVALID_ARGUMENT", "the stream does not fit inline");
    table.flags |= kInline;
    return send_frame_fds(table, {}, false, &stream.bytes);
  }
  table.ipc_offset = 0;
  table.ipc_length = stream.length;
  table.fd_count = 1;
  return send_frame(table, stream.segment.get());
  // the segment closes here: the peer holds its own fd, and the seals make it immutable.
}

uint64_t Channel::inline_room(const KV& metadata) const {
  if (!peer_has_capability("inline")) return 0;
  const uint64_t offset = inline_offset(metadata_bytes(metadata));
  const uint64_t room = offset < kMaxFrameBytes ? kMaxFrameBytes - offset : 0;
  return std::min(room, options_.max_inline_bytes);
}

void Channel::await_ack(uint64_t id, const Deadline& d) {
  for (;;) {
    auto r = read_frame(d);
    if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up before acknowledging message " + std::to_string(id));
    const Frame& f = r->frame;
    if (f.kind == Kind::Ack && f.correlation_id == id) return;
    if (f.kind == Kind::Error && f.correlation_id == id) throw remote_error(f, "the peer refused the table");
    if (!handle_other(*r)) throw Error("ERR_PEER_CLOSED", "the peer said GOODBYE before acknowledging");
  }
}

uint64_t Channel::send_stream(OutgoingStream stream, const KV& metadata, Timeout timeout) {
  uint64_t id = send_table(std::move(stream), metadata, 0, 0);
  await_ack(id, deadline_of(timeout));
  return id;
}

uint64_t Channel::send_segment(Fd segment, uint64_t ipc_length, const KV& metadata, Timeout timeout) {
  OutgoingStream stream;
  stream.segment = std::move(segment);
  stream.length = ipc_length;
  return send_stream(std::move(stream), metadata, timeout);
}

uint64_t Channel::send(const arrow::Table& table, const KV& metadata, Timeout timeout) {
  return send_stream(stream_from_table(table, inline_room(metadata)), metadata, timeout);
}

// ---------------------------------------------------------------------------------------------
// Receiving

// §5.1 (§5.3 for an INLINE one) on a received TABLE: map, validate, ACK and return it; or ERROR
// (same id) and throw.
ReceivedTable Channel::accept_table(Received& r, bool held) {
  const Frame& f = r.frame;
  const uint8_t reply_flags = (f.flags & kRequest) ? kResponse : 0;
  try {
    ReceivedTable m;
    if (f.flags & kInline) {  // decode_frame checked where the stream lies
      if (f.fd_count != 0 || !r.fds.empty() || (f.flags & kLeased))
        throw Error("ERR_PROTOCOL", "INLINE TABLE frame must carry no fd and no LEASED flag (fd_count " +
                                        std::to_string(f.fd_count) + ", " + std::to_string(r.fds.size()) + " fds)");
      if (f.ipc_length > options_.max_message_bytes)
        throw Error("ERR_TOO_LARGE", "ipc_length " + std::to_string(f.ipc_length) + " exceeds max_message_bytes " +
                                         std::to_string(options_.max_message_bytes));
      m.ipc = std::move(r.inline_ipc);
    } else {
      if (f.fd_count != 1 || r.fds.size() != 1)
        throw Error("ERR_PROTOCOL", "TABLE with fd_count " + std::to_string(f.fd_count) + " and " +
                                        std::to_string(r.fds.size()) + " fds received");
      // A store's held answer (§15.3) is LEASED yet fully sealed: the sealed policy below checks it.
      if ((f.flags & kLeased) && !held)
        throw Error("ERR_SEGMENT_UNSEALED", "LEASED segment, but this side did not offer 'lease'");
      uint64_t length = f.ipc_length;
      Mapping mapping =
          open_segment(r.fds[0].get(), f.ipc_offset, length, options_.allow_unsealed, options_.max_message_bytes);
      r.fds.clear();  // the mapping stays valid without the fd
      m.ipc = std::make_shared<MappedBuffer>(std::move(mapping), f.ipc_offset, length);
    }
    m.message_id = f.message_id;
    m.flags = f.flags;
    m.metadata = f.metadata;
    m.info = validate_stream(m.ipc->data(), static_cast<uint64_t>(m.ipc->size()), options_.ipc_limits,
                             options_.validate);
    Frame ack;
    ack.kind = Kind::Ack;
    ack.correlation_id = f.message_id;
    send_control(ack);
    return m;
  } catch (const Error& e) {
    r.fds.clear();
    send_error(e, f.message_id, reply_flags);
    throw;
  }
}

std::optional<ReceivedTable> Channel::receive_message(Timeout timeout) {
  const Deadline d = deadline_of(timeout);
  for (;;) {
    if (!inbox_.empty()) {
      Incoming next = std::move(inbox_.front());
      inbox_.pop_front();
      if (next.message) inbox_bytes_ -= static_cast<uint64_t>(next.message->ipc->size());
      if (next.error) throw *next.error;
      return std::move(next.message);
    }
    if (peer_gone_) return std::nullopt;
    auto r = read_frame(d);
    if (!r) return std::nullopt;
    handle_other(*r);
  }
}

std::shared_ptr<arrow::Table> Channel::receive(Timeout timeout) {
  auto m = receive_message(timeout);
  if (!m) throw Error("ERR_PEER_CLOSED", "the peer has gone");
  return m->table();
}

// ---------------------------------------------------------------------------------------------
// Request / response (§8)

std::shared_ptr<arrow::Table> Channel::request(const arrow::Table& table, Timeout timeout, const KV& metadata) {
  const uint64_t id = send_table(stream_from_table(table, inline_room(metadata)), metadata, kRequest, 0);
  const Deadline d = deadline_of(timeout);
  for (;;) {
    auto r = read_frame(d);
    if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up before answering request " + std::to_string(id));
    const Frame& f = r->frame;
    if (f.kind == Kind::Table && (f.flags & kResponse) && f.correlation_id == id) return accept_table(*r).table();
    if (f.kind == Kind::Error && f.correlation_id == id) throw remote_error(f, "the peer failed the request");
    if (f.kind == Kind::Ack && f.correlation_id == id) continue;  // the request arrived; the answer follows
    if (!handle_other(*r))
      throw Error("ERR_PEER_CLOSED", "the peer said GOODBYE before answering request " + std::to_string(id));
  }
}

void Channel::respond(const ReceivedTable& request, const arrow::Table& response, const KV& metadata, Timeout timeout) {
  const uint64_t id =
      send_table(stream_from_table(response, inline_room(metadata)), metadata, kResponse, request.message_id);
  await_ack(id, deadline_of(timeout));
}

void Channel::respond_error(const ReceivedTable& request, const Error& error) {
  Frame f;
  f.kind = Kind::Error;
  f.flags = kResponse;
  f.correlation_id = request.message_id;
  f.metadata = {{"code", error.code()}, {"message", std::string(error.what()).substr(0, 4096)}};
  send_frame(f);
}

uint64_t Channel::serve(const Handler& handler, std::optional<uint64_t> count) {
  uint64_t answered = 0;
  while (!count || answered < *count) {
    std::optional<ReceivedTable> m;
    try {
      m = receive_message();
    } catch (const Error&) {
      if (!is_open()) throw;
      continue;  // a table that failed the checks: its sender got the ERROR
    }
    if (!m) break;
    if (!m->is_request()) continue;
    answered++;
    std::shared_ptr<arrow::Table> response;
    std::optional<Error> failure;
    try {
      response = handler(*m);
      if (!response) failure = Error("ERR_INVALID_ARGUMENT", "the request handler returned no table");
    } catch (const Error& e) {
      failure = e;
    } catch (const std::exception& e) {
      failure = Error("ERR_REMOTE", e.what());
    }
    if (failure) respond_error(*m, *failure);
    else respond(*m, *response);
  }
  return answered;
}

}  // namespace arrow_shm
