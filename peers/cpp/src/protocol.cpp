// Frames, sockets and segments (docs/PROTOCOL.md §2, §3, §5, §6).
#include "arrow_shm.hpp"
#include "bytes.hpp"

#include <cerrno>
#include <cstring>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

namespace arrow_shm {

void throw_errno(const char* syscall, int err) {
  throw Error("ERR_SYSCALL", std::string(syscall) + " failed: " + std::strerror(err) + " (errno " +
                                 std::to_string(err) + ")");
}

Deadline deadline_after_ms(std::optional<int64_t> ms) {
  if (!ms) return std::nullopt;
  return Clock::now() + std::chrono::milliseconds(*ms);
}

int poll_timeout_ms(const Deadline& d) {
  if (!d) return -1;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*d - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 1000000 ? 1000000 : static_cast<int>(left);
}

// ---------------------------------------------------------------------------------------------
// Frames

namespace {

Error protocol(const std::string& m) { return Error("ERR_PROTOCOL", m); }

bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (n - i < len) return false;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}
}  // namespace

std::optional<std::string> Frame::get(const std::string& key) const {
  for (auto& [k, v] : metadata)
    if (k == key) return v;
  return std::nullopt;
}

size_t metadata_bytes(const KV& metadata) {
  if (metadata.empty()) return 0;
  size_t meta = 4;
  for (auto& [k, v] : metadata) meta += 8 + k.size() + v.size();
  return meta;
}

std::vector<uint8_t> encode_frame(const Frame& f, const uint8_t* inline_ipc, size_t inline_length) {
  const size_t meta = metadata_bytes(f.metadata);
  const size_t ipc_offset = inline_ipc ? inline_offset(meta) : 0;
  if (kHeaderLength + meta > kMaxFrameBytes || (inline_ipc && ipc_offset + inline_length > kMaxFrameBytes))
    throw Error("ERR_INVALID_ARGUMENT", "metadata (and inline stream) do not fit in a 65536-byte frame");
  std::vector<uint8_t> b(inline_ipc ? ipc_offset + inline_length : kHeaderLength + meta, 0);
  if (meta) {
    size_t at = kHeaderLength;
    auto put_str = [&](const std::string& s) {
      store<uint32_t>(&b[at], static_cast<uint32_t>(s.size()));
      if (!s.empty()) std::memcpy(b.data() + at + 4, s.data(), s.size());
      at += 4 + s.size();
    };
    store<uint32_t>(&b[at], static_cast<uint32_t>(f.metadata.size()));
    at += 4;
    for (auto& [k, v] : f.metadata) {
      put_str(k);
      put_str(v);
    }
  }
  std::memcpy(&b[0], "ASHM", 4);
  store<uint16_t>(&b[4], f.version);
  b[6] = static_cast<uint8_t>(f.kind);
  b[7] = f.flags;
  store<uint32_t>(&b[8], kHeaderLength);
  store<uint32_t>(&b[12], static_cast<uint32_t>(meta));
  store<uint64_t>(&b[16], f.message_id);
  store<uint64_t>(&b[24], f.correlation_id);
  store<uint64_t>(&b[32], inline_ipc ? ipc_offset : f.ipc_offset);
  store<uint64_t>(&b[40], inline_ipc ? inline_length : f.ipc_length);
  store<uint32_t>(&b[48], f.fd_count);
  if (inline_ipc) std::memcpy(b.data() + ipc_offset, inline_ipc, inline_length);
  return b;
}

Frame decode_frame(const uint8_t* p, size_t n) {
  if (n < kHeaderLength) throw protocol("frame of " + std::to_string(n) + " bytes is shorter than its header");
  if (std::memcmp(p, "ASHM", 4) != 0) throw protocol("bad frame magic");
  Frame f;
  f.version = load<uint16_t>(p + 4);
  uint8_t kind = p[6];
  if (kind < 1 || kind > kMaxKind) throw protocol("unknown frame kind " + std::to_string(kind));
  f.kind = static_cast<Kind>(kind);
  f.flags = p[7];
  if (f.flags & ~(kLeased | kRequest | kResponse | kInline)) throw protocol("unknown frame flags");
  uint32_t header_length = load<uint32_t>(p + 8);
  uint32_t meta_length = load<uint32_t>(p + 12);
  if (header_length != kHeaderLength) throw protocol("header_length " + std::to_string(header_length) + " is not 64");
  f.message_id = load<uint64_t>(p + 16);
  f.correlation_id = load<uint64_t>(p + 24);
  f.ipc_offset = load<uint64_t>(p + 32);
  f.ipc_length = load<uint64_t>(p + 40);
  f.fd_count = load<uint32_t>(p + 48);
  if (f.flags & kInline) {
    // §5.3: header, metadata, zeros up to 8, then exactly the IPC stream, to the end of the frame.
    if (f.kind != Kind::Table) throw protocol("INLINE flag on a frame of kind " + std::to_string(kind));
    if (meta_length > n - kHeaderLength || f.ipc_offset != inline_offset(meta_length) || f.ipc_length == 0 ||
        f.ipc_offset > n || f.ipc_length != n - f.ipc_offset)
      throw protocol("INLINE TABLE frame of " + std::to_string(n) + " bytes with metadata " + std::to_string(meta_length) +
                     ", IPC range [" + std::to_string(f.ipc_offset) + ", +" + std::to_string(f.ipc_length) +
                     "): the stream must start at " + std::to_string(inline_offset(meta_length)) + " and end the frame");
  } else if (meta_length != n - kHeaderLength) {
    throw protocol("metadata_length " + std::to_string(meta_length) + " does not match the frame size");
  }
  // key/value block
  const uint8_t* m = p + kHeaderLength;
  size_t len = meta_length, pos = 0;
  if (len == 0) return f;
  if (len < 4) throw protocol("key/value block shorter than its count");
  uint32_t count = load<uint32_t>(m);
  pos = 4;
  if (count > (len - 4) / 8) throw protocol("key/value count does not fit in the block");
  for (uint32_t i = 0; i < count; i++) {
    std::string parts[2];
    for (auto& s : parts) {
      if (len - pos < 4) throw protocol("key/value block ends inside a length");
      uint32_t l = load<uint32_t>(m + pos);
      pos += 4;
      if (l > len - pos) throw protocol("key/value string overruns the block");
      if (!valid_utf8(m + pos, l)) throw protocol("key/value string is not valid UTF-8");
      s.assign(reinterpret_cast<const char*>(m + pos), l);
      pos += l;
    }
    if (f.get(parts[0])) throw protocol("duplicate key '" + parts[0] + "' in key/value block");
    f.metadata.emplace_back(std::move(parts[0]), std::move(parts[1]));
  }
  if (pos != len) throw protocol("key/value block has trailing bytes");
  return f;
}

// ---------------------------------------------------------------------------------------------
// Sockets

namespace {
std::pair<sockaddr_un, socklen_t> make_addr(const std::string& addr) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::string path = addr;
  if (path.empty()) throw Error("ERR_INVALID_ARGUMENT", "empty socket address");
  if (path[0] == '@') path[0] = '\0';
  if (path.size() >= sizeof sa.sun_path + (path[0] == '\0' ? 1 : 0))
    throw Error("ERR_INVALID_ARGUMENT", "socket address too long: " + addr);
  std::memcpy(sa.sun_path, path.data(), path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '\0' ? 0 : 1));
  return {sa, len};
}
}  // namespace

void unlink_socket(const SocketFile& file) {
  if (file.path.empty() || file.path[0] == '@') return;
  struct stat st {};
  if (::lstat(file.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == file.dev && st.st_ino == file.ino)
    ::unlink(file.path.c_str());
}

namespace {
// After bind() failed with EADDRINUSE (§14.2): a listener that answers keeps its path
// (ERR_ADDRESS_IN_USE); a socket file nobody answers on is stale and removed.
void remove_stale_socket(const std::string& addr, const sockaddr_un& sa, socklen_t len, int type) {
  auto in_use = [&](const std::string& why) { return Error(kErrAddressInUse, addr + ": " + why); };
  if (addr[0] == '@') throw in_use("another process listens on this abstract address");
  struct stat st {};
  if (::lstat(addr.c_str(), &st) != 0) return;  // gone meanwhile: bind again
  if (!S_ISSOCK(st.st_mode)) throw in_use("the path exists and is not a socket");
  Fd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe) throw_errno("socket", errno);
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&sa), len) == 0 || errno != ECONNREFUSED)
    throw in_use("another listener answers on this path");
  ::unlink(addr.c_str());
}
}  // namespace

Fd listen_socket(const std::string& addr, int type, SocketFile* bound) {
  auto [sa, len] = make_addr(addr);
  Fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno("socket", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0) {
    if (errno != EADDRINUSE) throw_errno("bind", errno);
    remove_stale_socket(addr, sa, len, type);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0) {
      if (errno == EADDRINUSE) throw Error(kErrAddressInUse, addr + ": bound by another process meanwhile");
      throw_errno("bind", errno);
    }
  }
  if (addr[0] != '@') {
    // Remembered so that close removes this file only, not a successor's (§14.2).
    struct stat st {};
    if (::chmod(addr.c_str(), 0600) != 0 || ::lstat(addr.c_str(), &st) != 0) throw_errno("chmod", errno);
    if (bound) *bound = SocketFile{addr, st.st_dev, st.st_ino};
  }
  if (::listen(fd.get(), 16) != 0) throw_errno("listen", errno);
  return fd;
}

Fd accept_socket(int listen_fd, const Deadline& d) {
  for (;;) {
    pollfd p{listen_fd, POLLIN, 0};
    int r = ::poll(&p, 1, poll_timeout_ms(d));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("poll", errno);
    if (r == 0) throw Error("ERR_TIMEOUT", "timed out waiting for a connection");
    int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0 && (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)) continue;
    if (c < 0) throw_errno("accept", errno);
    return Fd(c);
  }
}

Fd connect_socket(const std::string& addr, int type, const Deadline& d) {
  auto [sa, len] = make_addr(addr);
  for (;;) {
    Fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!fd) throw_errno("socket", errno);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) == 0) return fd;
    int err = errno;
    bool retry = err == ENOENT || err == ECONNREFUSED || err == EAGAIN;
    if (retry && d && Clock::now() < *d) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (retry && d) throw Error("ERR_TIMEOUT", "timed out connecting to " + addr);
    if (retry) throw Error("ERR_PEER_CLOSED", "cannot connect to " + addr + ": " + std::strerror(err));
    throw_errno("connect", err);
  }
}

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
  std::vector<int> fds;
  if (pass_fd >= 0) fds.push_back(pass_fd);
  send_with_fds(sock, data, n, fds);
}

void send_with_fds(int sock, const void* data, size_t n, const std::vector<int>& pass_fds, bool nonblocking) {
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  if (pass_fds.size() > 16) throw Error("ERR_INVALID_ARGUMENT", "more than 16 fds on one frame");
  if (!pass_fds.empty()) {
    const size_t bytes = sizeof(int) * pass_fds.size();
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(bytes);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(bytes);
    std::memcpy(CMSG_DATA(c), pass_fds.data(), bytes);
  }
  ssize_t r;
  do {
    r = ::sendmsg(sock, &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (nonblocking && (errno == EAGAIN || errno == EWOULDBLOCK))
      throw Error(kErrResourceLimit, "the peer does not read its socket (send buffer full)");
    if (errno == EPIPE || errno == ECONNRESET) throw Error("ERR_PEER_CLOSED", "the peer hung up");
    throw_errno("sendmsg", errno);
  }
}

uint32_t peer_uid(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) throw_errno("getsockopt(SO_PEERCRED)", errno);
  return cred.uid;
}

// ---------------------------------------------------------------------------------------------
// Segments

constexpr int kSealsSealed = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

Fd make_segment(uint64_t length, uint64_t min_size, bool seal,
                const std::function<void(uint8_t*, uint64_t)>& fill) {
  if (length == 0) throw Error("ERR_INVALID_ARGUMENT", "empty IPC stream");
  uint64_t size = length > min_size ? length : min_size;
  Fd fd(::memfd_create("arrow-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) throw_errno("memfd_create", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throw_errno("ftruncate", errno);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) throw_errno("mmap", errno);
  try {
    fill(static_cast<uint8_t*>(p), length);
  } catch (...) {
    ::munmap(p, size);
    throw;
  }
  ::munmap(p, size);  // no writable mapping may remain when F_SEAL_WRITE is added
  if (seal && ::fcntl(fd.get(), F_ADD_SEALS, kSealsSealed) != 0) throw_errno("fcntl(F_ADD_SEALS)", errno);
  return fd;
}

void Mapping::reset() {
  if (p_ && n_) ::munmap(const_cast<uint8_t*>(p_), n_);
  p_ = nullptr;
  n_ = 0;
}

Mapping open_segment(int fd, uint64_t ipc_offset, uint64_t& ipc_length, bool allow_unsealed,
                     uint64_t max_message_bytes, bool to_end) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("fstat", errno);
  if (!S_ISREG(st.st_mode)) throw Error("ERR_SEGMENT_INVALID", "the fd is not a regular file (not a memfd)");
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    if (errno == EINVAL) throw Error("ERR_SEGMENT_INVALID", "F_GET_SEALS failed with EINVAL: not a memfd/shmem file");
    throw_errno("fcntl(F_GET_SEALS)", errno);
  }
  if (!allow_unsealed && (seals & kSealsSealed) != kSealsSealed) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "segment seals 0x%x lack the required 0x%x", seals, kSealsSealed & ~seals);
    throw Error("ERR_SEGMENT_UNSEALED", buf);
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (to_end) ipc_length = size > ipc_offset ? size - ipc_offset : 0;
  if (ipc_length == 0) throw Error("ERR_SEGMENT_BOUNDS", "ipc_length is 0");
  if (ipc_offset % 8) throw Error("ERR_SEGMENT_BOUNDS", "ipc_offset " + std::to_string(ipc_offset) + " is not a multiple of 8");
  if (ipc_offset > size || ipc_length > size - ipc_offset)
    throw Error("ERR_SEGMENT_BOUNDS", "IPC range [" + std::to_string(ipc_offset) + ", +" + std::to_string(ipc_length) +
                                          ") is outside the " + std::to_string(size) + "-byte segment");
  if (ipc_length > max_message_bytes)
    throw Error("ERR_TOO_LARGE", "ipc_length " + std::to_string(ipc_length) + " exceeds max_message_bytes " +
                                     std::to_string(max_message_bytes));
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw_errno("mmap", errno);
  return Mapping(static_cast<const uint8_t*>(p), size);
}

}  // namespace arrow_shm
