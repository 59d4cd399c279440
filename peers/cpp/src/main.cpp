// arrow-shm-cpp: the command line of docs/CLI.md over the protocol of docs/PROTOCOL.md.
#include "arrow_shm.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

using namespace arrow_shm;

namespace {

constexpr const char* kProg = "arrow-shm";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// One connection: frames with optional fds, handshake, TABLE/ACK/ERROR (PROTOCOL §3-§5).

struct Received {
  Frame frame;
  std::vector<Fd> fds;
};

// Waits for readability (POLLIN) until the deadline.
void wait_readable(int fd, const Deadline& d, const char* what) {
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, poll_timeout_ms(d));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("poll", errno);
    if (r == 0) throw Error("ERR_TIMEOUT", std::string("timed out waiting for ") + what);
    return;
  }
}

// recvmsg with SCM_RIGHTS; returns bytes read (0 = peer closed), fds, and msg_flags.
size_t recv_with_fds(int sock, uint8_t* buf, size_t cap, std::vector<Fd>& fds, int& flags) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == ECONNRESET) return 0;
    throw_errno("recvmsg", errno);
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.emplace_back(fd);
    }
  }
  flags = msg.msg_flags;
  return static_cast<size_t>(n);
}

void send_with_fd(int sock, const void* data, size_t n, int pass_fd) {
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (pass_fd >= 0) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof pass_fd);
  }
  ssize_t r;
  do {
    r = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EPIPE || errno == ECONNRESET) throw Error("ERR_PEER_CLOSED", "the peer hung up");
    throw_errno("sendmsg", errno);
  }
}

class Channel {
 public:
  explicit Channel(Fd fd) : fd_(std::move(fd)) {}
  ~Channel() { close(); }

  uint64_t peer_max_message_bytes = kDefaultMaxMessageBytes;

  uint64_t send(Frame f, int pass_fd = -1) {
    f.message_id = next_id_++;
    auto bytes = encode_frame(f);
    send_with_fd(fd_.get(), bytes.data(), bytes.size(), pass_fd);
    return f.message_id;
  }

  void send_error(const Error& e, uint64_t correlation_id, uint8_t flags = 0) {
    Frame f;
    f.kind = Kind::Error;
    f.flags = flags;
    f.correlation_id = correlation_id;
    f.metadata = {{"code", e.code()}, {"message", std::string(e.what()).substr(0, 4096)}};
    try {
      send(f);
    } catch (const Error&) {
    }
  }

  // A frame-level failure: ERROR with correlation_id 0 if possible, close, throw.
  [[noreturn]] void fatal(const Error& e) {
    if (fd_) send_error(e, 0);
    fd_.reset();
    throw e;
  }

  // The next frame, or nullopt when the peer hung up.
  std::optional<Received> receive(const Deadline& d) {
    if (!fd_) return std::nullopt;
    wait_readable(fd_.get(), d, "the peer");
    std::vector<uint8_t> buf(kMaxFrameBytes);
    Received r;
    int flags = 0;
    size_t n = recv_with_fds(fd_.get(), buf.data(), buf.size(), r.fds, flags);
    if (n == 0 && r.fds.empty()) {
      fd_.reset();
      return std::nullopt;
    }
    if (flags & MSG_TRUNC) fatal(Error("ERR_PROTOCOL", "frame larger than 65536 bytes (MSG_TRUNC)"));
    if (flags & MSG_CTRUNC) fatal(Error("ERR_PROTOCOL", "too many file descriptors (MSG_CTRUNC)"));
    try {
      r.frame = decode_frame(buf.data(), n);
    } catch (const Error& e) {
      fatal(e);
    }
    if (handshaken_ && r.frame.version != 1)
      fatal(Error("ERR_PROTOCOL_VERSION", "frame of version " + std::to_string(r.frame.version) + ", agreed 1"));
    return r;
  }

  void handshake_as_connector(const Deadline& d) {
    check_peer();
    Frame hello;
    hello.kind = Kind::Hello;
    hello.metadata = {{"min_version", "1"},
                      {"max_version", "1"},
                      {"capabilities", ""},
                      {"implementation", kImplementation},
                      {"pid", std::to_string(::getpid())}};
    send(hello);
    auto r = receive(d);
    if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up during the handshake");
    const Frame& f = r->frame;
    if (f.kind == Kind::Error) {
      fd_.reset();
      throw Error(f.get("code").value_or("ERR_REMOTE"), f.get("message").value_or("handshake refused"));
    }
    if (f.kind != Kind::Welcome || !r->fds.empty()) fatal(Error("ERR_PROTOCOL", "expected WELCOME"));
    if (f.version != 1 || f.get("version").value_or("1") != "1")
      fatal(Error("ERR_PROTOCOL_VERSION", "the listener chose an unknown version"));
    if (auto m = f.get("max_message_bytes")) {
      try {
        peer_max_message_bytes = std::stoull(*m);
      } catch (...) {
        fatal(Error("ERR_PROTOCOL", "bad max_message_bytes in WELCOME"));
      }
    }
    handshaken_ = true;
  }

  void handshake_as_listener(const Deadline& user) {
    if (peer_uid(fd_.get()) != ::geteuid()) {
      send_error(Error("ERR_PEER_CREDENTIALS", "peer uid not allowed"), 0);
      fd_.reset();
      throw Error("ERR_PEER_CREDENTIALS", "the peer's uid is not allowed");
    }
    Deadline d = Clock::now() + std::chrono::seconds(5);
    if (user && *user < *d) d = user;
    auto r = receive(d);
    if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up before HELLO");
    const Frame& f = r->frame;
    if (f.kind != Kind::Hello || !r->fds.empty()) fatal(Error("ERR_PROTOCOL", "expected HELLO"));
    uint64_t lo = 0, hi = 0;
    try {
      lo = std::stoull(f.get("min_version").value_or("x"));
      hi = std::stoull(f.get("max_version").value_or("x"));
    } catch (...) {
      fatal(Error("ERR_PROTOCOL", "HELLO lacks a decimal min_version/max_version"));
    }
    if (lo > 1 || hi < 1) fatal(Error("ERR_PROTOCOL_VERSION", "no common protocol version (this side speaks 1)"));
    Frame welcome;
    welcome.kind = Kind::Welcome;
    welcome.metadata = {{"version", "1"},
                        {"capabilities", ""},
                        {"implementation", kImplementation},
                        {"pid", std::to_string(::getpid())},
                        {"max_message_bytes", std::to_string(kDefaultMaxMessageBytes)}};
    send(welcome);
    handshaken_ = true;
  }

  void close() {
    if (!fd_) return;
    Frame bye;
    bye.kind = Kind::Goodbye;
    try {
      send(bye);
    } catch (const Error&) {
    }
    fd_.reset();
  }

 private:
  void check_peer() {
    if (peer_uid(fd_.get()) != ::geteuid()) {
      fd_.reset();
      throw Error("ERR_PEER_CREDENTIALS", "the peer's uid is not allowed");
    }
  }

  Fd fd_;
  uint64_t next_id_ = 1;
  bool handshaken_ = false;
};

// Handles a frame that neither side of the CLI expects: returns true to continue, throws if fatal.
bool common_frame(Channel& ch, Received& r) {
  const Frame& f = r.frame;
  switch (f.kind) {
    case Kind::Error:
      if (f.correlation_id == 0)
        throw Error(f.get("code").value_or("ERR_REMOTE"), f.get("message").value_or("the peer failed"));
      return true;
    case Kind::Ack:
    case Kind::Release:
      return true;
    case Kind::Hello:
    case Kind::Welcome:
      ch.fatal(Error("ERR_PROTOCOL", "handshake frame after the handshake"));
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Received tables

struct Table {
  Mapping mapping;
  uint64_t offset = 0;
  uint64_t length = 0;  // bytes handed to --out
  KV metadata;
  StreamInfo info;
  const uint8_t* bytes() const { return mapping.data() + offset; }
};

// PROTOCOL §5.1 on a received TABLE: ACK and return it, or ERROR and throw.
Table accept_table(Channel& ch, Received& r, bool allow_unsealed) {
  const Frame& f = r.frame;
  uint8_t reply_flags = (f.flags & kRequest) ? kResponse : 0;
  try {
    if (f.fd_count != 1 || r.fds.size() != 1)
      throw Error("ERR_PROTOCOL", "TABLE with fd_count " + std::to_string(f.fd_count) + " and " +
                                      std::to_string(r.fds.size()) + " fds received");
    if (f.flags & kLeased) throw Error("ERR_SEGMENT_UNSEALED", "LEASED segment, but this side did not offer 'lease'");
    Table t;
    t.offset = f.ipc_offset;
    t.length = f.ipc_length;
    t.mapping = open_segment(r.fds[0].get(), f.ipc_offset, t.length, allow_unsealed);
    r.fds.clear();  // the mapping stays valid without the fd
    t.info = validate_stream(t.bytes(), t.length);
    t.metadata = f.metadata;
    Frame ack;
    ack.kind = Kind::Ack;
    ack.correlation_id = f.message_id;
    ch.send(ack);
    return t;
  } catch (const Error& e) {
    r.fds.clear();
    ch.send_error(e, f.message_id, reply_flags);
    throw;
  }
}

class Output {
 public:
  Output(std::optional<std::string> out, int count) : out_(std::move(out)) {
    if (!out_) return;
    struct stat st {};
    as_dir_ = count > 1 || (::stat(out_->c_str(), &st) == 0 && S_ISDIR(st.st_mode));
    if (as_dir_ && ::mkdir(out_->c_str(), 0777) != 0 && errno != EEXIST) throw_errno("mkdir", errno);
  }
  void write(const uint8_t* data, uint64_t n, int index) const {
    if (!out_) return;
    std::string path = *out_;
    if (as_dir_) {
      char name[32];
      std::snprintf(name, sizeof name, "/%06d.arrows", index);
      path += name;
    }
    std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n));
      f.close();
      if (!f) throw Error("ERR_SYSCALL", "cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("rename", errno);
  }

 private:
  std::optional<std::string> out_;
  bool as_dir_ = false;
};

// ---------------------------------------------------------------------------------------------
// Command line

struct Options {
  std::string command;
  std::optional<std::string> socket, out;
  bool listen = false, connect = false, print = false, seed_compat = false, allow_unsealed = false;
  KV meta;
  std::optional<int64_t> timeout_ms;
  int count = 1;
  std::vector<std::string> files;
};

int64_t parse_int(const std::string& flag, const std::string& v, int64_t min) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (...) {
    used = 0;
  }
  if (used != v.size() || v.empty()) throw UsageError("argument " + flag + ": invalid integer '" + v + "'");
  if (x < min) throw UsageError("argument " + flag + ": expected an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return x;
}

Options parse(int argc, char** argv) {
  if (argc < 2) throw UsageError("usage: arrow-shm-cpp send|recv|validate ...");
  Options o;
  o.command = argv[1];
  if (o.command != "send" && o.command != "recv" && o.command != "validate")
    throw UsageError("unknown command '" + o.command + "' (send, recv, validate)");
  const bool send = o.command == "send", recv = o.command == "recv";
  bool positional_only = false;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    if (positional_only || a == "-" || a.rfind("--", 0) != 0) {
      if (recv) throw UsageError("unrecognized argument: " + a);
      o.files.push_back(a);
      continue;
    }
    if (a == "--") {
      positional_only = true;
      continue;
    }
    std::optional<std::string> inline_value;
    if (auto eq = a.find('='); eq != std::string::npos) {
      inline_value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) throw UsageError("argument " + a + ": expected one argument");
      return argv[++i];
    };
    auto flag = [&](bool allowed, bool& target) {
      if (!allowed || inline_value) throw UsageError("unrecognized argument: " + std::string(argv[i]));
      target = true;
    };
    if (a == "--socket" && (send || recv)) o.socket = value();
    else if (a == "--timeout-ms" && (send || recv)) o.timeout_ms = parse_int(a, value(), 0);
    else if (a == "--seed-compat") flag(send || recv, o.seed_compat);
    else if (a == "--listen") flag(send, o.listen);
    else if (a == "--meta" && send) {
      std::string kv = value();
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("--meta expects KEY=VALUE, got '" + kv + "'");
      std::string k = kv.substr(0, eq);
      bool replaced = false;
      for (auto& [key, v] : o.meta)
        if (key == k) v = kv.substr(eq + 1), replaced = true;
      if (!replaced) o.meta.emplace_back(k, kv.substr(eq + 1));
    } else if (a == "--connect") flag(recv, o.connect);
    else if (a == "--print") flag(recv, o.print);
    else if (a == "--allow-unsealed") flag(recv, o.allow_unsealed);
    else if (a == "--count" && recv) o.count = static_cast<int>(parse_int(a, value(), 1));
    else if (a == "--out" && recv) o.out = value();
    else throw UsageError("unrecognized argument: " + std::string(argv[i]));
  }
  if (send && o.files.empty()) throw UsageError("the following arguments are required: FILE");
  if (o.command == "validate" && o.files.size() != 1) throw UsageError("usage: arrow-shm-cpp validate FILE");
  if ((send || recv) && !o.socket && !o.seed_compat) throw UsageError("the following arguments are required: --socket");
  for (auto& f : o.files) {
    struct stat st {};
    if (f != "-" && (::stat(f.c_str(), &st) != 0 || !S_ISREG(st.st_mode))) throw UsageError("no such file: " + f);
  }
  return o;
}

std::vector<uint8_t> load(const std::string& path) {
  std::vector<uint8_t> data;
  if (path == "-") {
    data.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw UsageError("no such file: " + path);
    data.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  if (data.empty()) throw Error("ERR_INVALID_ARGUMENT", (path == "-" ? std::string("standard input") : path) + " is empty");
  return data;
}

void listening(const std::string& addr) {
  std::cerr << kProg << ": listening on " << addr << std::endl;
}

// Removes the listener's socket file on every exit path.
struct SocketFileGuard {
  std::string addr;
  ~SocketFileGuard() { unlink_socket(addr); }
};

int cmd_send(const Options& o) {
  std::vector<std::vector<uint8_t>> inputs;
  for (auto& f : o.files) inputs.push_back(load(f));

  if (o.seed_compat) {
    const std::string addr = o.socket.value_or(kDefaultSeedSocket);
    Fd lst = listen_socket(addr, SOCK_STREAM);
    SocketFileGuard guard{addr};
    listening(addr);
    for (auto& data : inputs) {
      auto [seg, length] = segment_from_file_bytes(data, kSeedSegmentBytes, /*seal=*/false);
      (void)length;
      Fd conn = accept_socket(lst.get(), deadline_after_ms(o.timeout_ms));
      send_with_fd(conn.get(), "F", 1, seg.get());
    }
    return 0;
  }

  std::unique_ptr<Channel> ch;
  if (o.listen) {
    Fd lst = listen_socket(*o.socket, SOCK_SEQPACKET);
    SocketFileGuard guard{*o.socket};
    listening(*o.socket);
    ch = std::make_unique<Channel>(accept_socket(lst.get(), deadline_after_ms(o.timeout_ms)));
    ch->handshake_as_listener(deadline_after_ms(o.timeout_ms));
  } else {
    ch = std::make_unique<Channel>(connect_socket(*o.socket, SOCK_SEQPACKET, deadline_after_ms(o.timeout_ms)));
    ch->handshake_as_connector(deadline_after_ms(o.timeout_ms));
  }
  for (auto& data : inputs) {
    auto [seg, length] = segment_from_file_bytes(data, 0, /*seal=*/true);
    if (length > ch->peer_max_message_bytes)
      throw Error("ERR_TOO_LARGE", "IPC stream of " + std::to_string(length) + " bytes exceeds the peer's max_message_bytes");
    Frame table;
    table.kind = Kind::Table;
    table.ipc_offset = 0;
    table.ipc_length = length;
    table.fd_count = 1;
    table.metadata = o.meta;
    uint64_t id = ch->send(table, seg.get());
    seg.reset();  // ownership passed with the fd
    Deadline d = deadline_after_ms(o.timeout_ms);
    for (;;) {
      auto r = ch->receive(d);
      if (!r) throw Error("ERR_PEER_CLOSED", "the peer hung up before acknowledging message " + std::to_string(id));
      const Frame& f = r->frame;
      if (f.kind == Kind::Ack && f.correlation_id == id) break;
      if (f.kind == Kind::Error && f.correlation_id == id)
        throw Error(f.get("code").value_or("ERR_REMOTE"), f.get("message").value_or("the peer refused the table"));
      if (f.kind == Kind::Goodbye) throw Error("ERR_PEER_CLOSED", "the peer said GOODBYE before acknowledging");
      if (f.kind == Kind::Table) {  // this CLI side only sends
        ch->send_error(Error("ERR_IPC_UNSUPPORTED", "arrow-shm-cpp send does not receive tables"), f.message_id);
        continue;
      }
      common_frame(*ch, *r);
    }
  }
  ch->close();
  return 0;
}


// Prints the summary of docs/CLI.md (an undecodable table: ERR_IPC_UNSUPPORTED on stderr).
void print_summary(const Table& t, int index, int& status) {
  std::cout << "== table " << index << ": " << t.length << " bytes of Arrow IPC ==\n";
  if (!t.metadata.empty()) {
    std::cout << "metadata: ";
    for (size_t i = 0; i < t.metadata.size(); i++)
      std::cout << (i ? ", " : "") << t.metadata[i].first << "=" << t.metadata[i].second;
    std::cout << "\n";
  }
  if (t.info.unsupported) {
    std::cout.flush();
    std::cerr << kProg << ": " << t.info.unsupported->code() << ": " << t.info.unsupported->what() << std::endl;
    return;
  }
  std::cout << "schema: " << t.info.schema << "\n";
  std::cout << "rows: " << t.info.rows << ", columns: " << t.info.num_columns << ", batches: " << t.info.batches
            << std::endl;
  (void)status;
}

int cmd_recv(const Options& o) {
  Output output(o.out, o.count);
  int status = 0;
  int received = 0;
  auto handle = [&](const Table& t) {
    output.write(t.bytes(), t.length, received);
    if (o.print) print_summary(t, received, status);
    received++;
  };

  if (o.seed_compat) {
    const std::string addr = o.socket.value_or(kDefaultSeedSocket);
    while (received < o.count) {
      Deadline d = deadline_after_ms(o.timeout_ms);
      Fd sock = connect_socket(addr, SOCK_STREAM, d);
      wait_readable(sock.get(), d, "the seed sender");
      uint8_t byte = 0;
      std::vector<Fd> fds;
      int flags = 0;
      size_t n = recv_with_fds(sock.get(), &byte, 1, fds, flags);
      if (fds.empty()) {
        if (n == 0) throw Error("ERR_PEER_CLOSED", "the seed sender hung up without sending");
        throw Error("ERR_PROTOCOL", "the seed sender sent no file descriptor");
      }
      if (n != 1 || byte != 'F' || fds.size() != 1)
        throw Error("ERR_PROTOCOL", "expected 'F' with one fd, got " + std::to_string(n) + " bytes and " +
                                        std::to_string(fds.size()) + " fds");
      Table t;
      t.mapping = open_segment(fds[0].get(), 0, t.length, /*allow_unsealed=*/true, kDefaultMaxMessageBytes, /*to_end=*/true);
      t.info = validate_stream(t.bytes(), t.length);
      t.length = t.info.end;  // the rest of the segment is zero padding
      handle(t);
    }
    return status;
  }

  auto drain = [&](Channel& ch) {
    while (received < o.count) {
      auto r = ch.receive(deadline_after_ms(o.timeout_ms));
      if (!r || r->frame.kind == Kind::Goodbye) return;
      if (r->frame.kind == Kind::Table) {
        handle(accept_table(ch, *r, o.allow_unsealed));
        continue;
      }
      if (!r->fds.empty()) ch.fatal(Error("ERR_PROTOCOL", "file descriptors attached to a non-TABLE frame"));
      common_frame(ch, *r);
    }
    ch.close();
  };

  if (o.connect) {
    Channel ch(connect_socket(*o.socket, SOCK_SEQPACKET, deadline_after_ms(o.timeout_ms)));
    ch.handshake_as_connector(deadline_after_ms(o.timeout_ms));
    drain(ch);
    if (received < o.count)
      throw Error("ERR_PEER_CLOSED", "the peer hung up after " + std::to_string(received) + " of " +
                                         std::to_string(o.count) + " tables");
    return status;
  }
  Fd lst = listen_socket(*o.socket, SOCK_SEQPACKET);
  SocketFileGuard guard{*o.socket};
  listening(*o.socket);
  while (received < o.count) {
    Channel ch(accept_socket(lst.get(), deadline_after_ms(o.timeout_ms)));
    ch.handshake_as_listener(deadline_after_ms(o.timeout_ms));
    drain(ch);
  }
  return status;
}

// `validate FILE`: the receiver's IPC validation on a file; prints `ok` or the typed error.
int cmd_validate(const Options& o) {
  auto data = load(o.files[0]);
  StreamInfo info = validate_stream(data.data(), data.size());
  if (info.unsupported) throw *info.unsupported;
  std::cout << "ok" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o = parse(argc, argv);
    if (o.command == "send") return cmd_send(o);
    if (o.command == "recv") return cmd_recv(o);
    return cmd_validate(o);
  } catch (const UsageError& e) {
    std::cerr << kProg << ": " << e.what() << std::endl;
    return 2;
  } catch (const Error& e) {
    std::cout.flush();
    std::cerr << kProg << ": " << e.code() << ": " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << kProg << ": unexpected failure: " << e.what() << std::endl;
    return 1;
  }
}
