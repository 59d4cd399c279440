// `recv`: tables from every sender at once (or one connection, or the seed protocol), written to
// --out and/or printed.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>

#include <arrow/scalar.h>
#include <arrow/type_traits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.hpp"

namespace arrow_shm::cli {

Output::Output(std::optional<std::string> out, int count) : out_(std::move(out)) {
  if (!out_) return;
  struct stat st {};
  const bool exists = ::stat(out_->c_str(), &st) == 0;
  as_dir_ = count > 1 || (exists && S_ISDIR(st.st_mode));
  if (as_dir_ && !exists && ::mkdir(out_->c_str(), 0777) != 0 && errno != EEXIST)
    throw UsageError("--out " + *out_ + ": cannot create the directory: " + std::strerror(errno));
  if (as_dir_ && (::stat(out_->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)))
    throw UsageError("--out " + *out_ + ": not a directory (--count > 1 writes DIR/000000.arrows, ...)");
  if (!as_dir_ && exists && !S_ISREG(st.st_mode)) throw UsageError("--out " + *out_ + ": not a regular file");
  const std::string dir = as_dir_ ? *out_ : parent(*out_);
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw UsageError("--out " + *out_ + ": cannot write into " + dir + ": " + std::strerror(errno));
}

void Output::write(const uint8_t* data, uint64_t n, int index) const {
  if (!out_) return;
  std::string path = *out_;
  if (as_dir_) {
    char name[32];
    std::snprintf(name, sizeof name, "/%06d.arrows", index);
    path += name;
  }
  std::string tmp = path + ".XXXXXX";
  Fd fd(::mkstemp(tmp.data()));
  if (!fd) throw_errno("mkstemp", errno);
  try {
    for (uint64_t done = 0; done < n;) {
      const ssize_t w = ::write(fd.get(), data + done, static_cast<size_t>(std::min<uint64_t>(n - done, 1u << 30)));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) throw_errno("write", errno);
      done += static_cast<uint64_t>(w);
    }
    if (::fchmod(fd.get(), 0644) != 0) throw_errno("fchmod", errno);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("rename", errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

std::string Output::parent(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

namespace {

// One JSON value for a `first rows:` line: numbers and booleans bare, everything else quoted.
std::string json_value(const arrow::Scalar& s) {
  if (!s.is_valid) return "null";
  const auto id = s.type->id();
  if (id == arrow::Type::BOOL || arrow::is_integer(id)) return s.ToString();
  if (arrow::is_floating(id)) {
    const std::string text = s.ToString();
    return std::isfinite(std::strtod(text.c_str(), nullptr)) ? text : "null";
  }
  std::string out = "\"";
  for (unsigned char c : s.ToString()) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      out += esc;
    } else out += static_cast<char>(c);
  }
  return out + "\"";
}

std::string json_quote(const std::string& s) { return json_value(arrow::StringScalar(s)); }

// §14.2 for a listener that holds connections: past kMaxConnections the connection idle longest
// (at least 1 s) makes room, else the new one is refused; a connection without a frame for
// kIdleTimeout is closed; a connection that has not said HELLO within 5 s is dropped.
constexpr size_t kMaxConnections = 256;                  // max_connections
constexpr std::chrono::milliseconds kIdleTimeout{300000};  // idle_timeout_ms
constexpr auto kHelloTimeout = std::chrono::seconds(5);

// One accepted connection: its socket until HELLO has arrived, then its Channel.
struct Peer {
  explicit Peer(Fd fd) : pending(std::move(fd)) {}
  Fd pending;
  std::unique_ptr<Channel> channel;
  Clock::time_point accepted = Clock::now();
  Clock::time_point last_activity() const { return channel ? channel->last_activity() : accepted; }
  int fd() const { return channel ? channel->native_handle() : pending.get(); }
  // Ends it with ERROR `e` (correlation_id 0), no GOODBYE.
  void fail(const Error& e) {
    if (!channel) channel = std::make_unique<Channel>(std::move(pending), ChannelOptions{});
    channel->fail(e);
  }
};

// Receives from every sender at once, so an idle or hostile one delays nobody: a connection that
// fails ends alone (its reason on stderr), a refused table is reported and the rest continue.
// `take` is called for every table and returns false once it wants no more. ERR_TIMEOUT when no
// table came for `timeout`.
void receive_from_all(Listener& listener, const ChannelOptions& options, Timeout timeout,
                      const std::function<bool(const ReceivedTable&)>& take) {
  std::vector<Peer> peers;
  auto give_up = timeout ? Deadline(Clock::now() + *timeout) : Deadline();
  for (;;) {
    const auto now = Clock::now();
    std::erase_if(peers, [&](Peer& p) {
      if (!p.channel) return now - p.accepted >= kHelloTimeout;  // SHOULD drop (§4)
      if (now - p.channel->last_activity() >= kIdleTimeout)
        p.fail(Error("ERR_TIMEOUT", "no frame for " + std::to_string(kIdleTimeout.count()) + " ms (idle_timeout_ms)"));
      return p.channel->peer_gone();
    });
    std::vector<pollfd> fds{{listener.native_handle(), POLLIN, 0}};
    for (auto& p : peers) fds.push_back({p.fd(), POLLIN, 0});
    // Waking at least once a second is what checks the timeouts above.
    const int wait = std::min(poll_timeout_ms(give_up) < 0 ? 1000 : poll_timeout_ms(give_up), 1000);
    if (::poll(fds.data(), fds.size(), wait) < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll", errno);
    }
    if (give_up && Clock::now() >= *give_up) throw Error("ERR_TIMEOUT", "timed out waiting for a table");
    for (size_t i = 0; i + 1 < fds.size(); i++) {
      if (!fds[i + 1].revents) continue;
      Peer& p = peers[i];
      try {
        if (!p.channel) p.channel = Channel::accept(std::move(p.pending), std::chrono::milliseconds(0), options);
        else p.channel->pump(0);
      } catch (const Error& e) {
        if (e.code() != "ERR_PEER_CLOSED") report("a connection failed: ", e);
        if (!p.channel) p.channel = std::make_unique<Channel>(Fd(), options);  // gone: dropped above
        continue;
      }
      while (p.channel->has_message()) {
        std::optional<ReceivedTable> m;
        try {
          m = p.channel->receive_message();
        } catch (const Error& e) {
          report("refused a table: ", e);  // its sender got the ERROR; the connection goes on
          continue;
        }
        if (!m) break;
        if (timeout) give_up = Clock::now() + *timeout;
        if (!take(*m)) {
          for (auto& q : peers)
            if (q.channel) q.channel->close();
          return;
        }
      }
      if (p.channel->peer_gone() && p.channel->failure() && p.channel->failure()->code() != "ERR_PEER_CLOSED")
        report("a connection failed: ", *p.channel->failure());
    }
    // New connections last: fds[] holds the ones polled, in order.
    if (fds[0].revents) {
      try {
        Fd fd = accept_socket(listener.native_handle(), Clock::now());
        if (peers.size() >= kMaxConnections) {
          auto idlest = std::min_element(peers.begin(), peers.end(), [](const Peer& a, const Peer& b) {
            return a.last_activity() < b.last_activity();
          });
          if (Clock::now() - idlest->last_activity() >= std::chrono::seconds(1)) {
            idlest->fail(Error("ERR_TIMEOUT", "closed to make room for a new connection (max_connections)"));
            peers.erase(idlest);
          } else {
            Peer refused(std::move(fd));
            refused.fail(Error(kErrResourceLimit, "too many connections (max_connections " +
                                                       std::to_string(kMaxConnections) + ")"));
          }
        }
        if (fd) peers.emplace_back(std::move(fd));
      } catch (const Error& e) {
        if (e.code() != "ERR_TIMEOUT") report("", e);  // the connection went away meanwhile
      }
    }
  }
}

}  // namespace

// Prints the summary of docs/CLI.md, with up to 5 first rows as JSON objects like the Node CLI
// (an undecodable table: ERR_IPC_UNSUPPORTED on stderr).
void print_summary(const ReceivedTable& m, int index) {
  std::cout << "== table " << index << ": " << m.ipc->size() << " bytes of Arrow IPC ==\n";
  if (!m.metadata.empty()) {
    std::cout << "metadata: ";
    for (size_t i = 0; i < m.metadata.size(); i++)
      std::cout << (i ? ", " : "") << m.metadata[i].first << "=" << m.metadata[i].second;
    std::cout << "\n";
  }
  if (m.info.unsupported) {
    std::cout.flush();
    report("", *m.info.unsupported);
    return;
  }
  std::cout << "schema: " << m.info.schema << "\n";
  std::cout << "rows: " << m.info.rows << ", columns: " << m.info.num_columns << ", batches: " << m.info.batches
            << "\n";
  auto table = m.table();  // zero copy: the columns point into the mapping
  const int64_t head = std::min<int64_t>(5, table->num_rows());
  if (head > 0) std::cout << "first rows:\n";
  for (int64_t row = 0; row < head; row++) {
    std::cout << "  {";
    for (int c = 0; c < table->num_columns(); c++) {
      auto scalar = table->column(c)->GetScalar(row);
      std::cout << (c ? "," : "") << json_quote(table->field(c)->name()) << ":"
                << (scalar.ok() ? json_value(**scalar) : "null");
    }
    std::cout << "}\n";
  }
  std::cout.flush();
}

int cmd_recv(const Options& o) {
  const int64_t count = o.count.value_or(1);
  Output output(o.out, static_cast<int>(count));
  int received = 0;
  auto handle = [&](const ReceivedTable& m) {
    output.write(m.ipc->data(), static_cast<uint64_t>(m.ipc->size()), received);
    if (o.print) print_summary(m, received);
    received++;
  };

  if (o.seed_compat) {
    const std::string addr = o.socket.value_or(kDefaultSeedSocket);
    while (received < count) {
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
      uint64_t length = 0;
      Mapping mapping = open_segment(fds[0].get(), 0, length, /*allow_unsealed=*/true, kDefaultMaxMessageBytes,
                                     /*to_end=*/true);
      ReceivedTable m;
      m.info = validate_stream(mapping.data(), length, {}, o.validate);
      // The rest of the segment is zero padding.
      m.ipc = std::make_shared<MappedBuffer>(std::move(mapping), 0, m.info.end);
      handle(m);
    }
    return 0;
  }

  ChannelOptions options;
  options.allow_unsealed = o.allow_unsealed;
  options.validate = o.validate;
  options.receives_streams = false;  // a stream needs --stream: refused rather than left waiting
  if (o.connect) {
    auto ch = Channel::connect(*o.socket, timeout(o), options);
    while (received < count) {
      auto m = ch->receive_message(timeout(o));
      if (!m) break;
      handle(*m);
    }
    ch->close();
    if (received < count)
      throw Error("ERR_PEER_CLOSED", "the peer hung up after " + std::to_string(received) + " of " +
                                         std::to_string(count) + " tables");
    return 0;
  }
  Listener listener(*o.socket);
  listening(*o.socket);
  receive_from_all(listener, options, timeout(o), [&](const ReceivedTable& m) {
    handle(m);
    return received < count;
  });
  return 0;
}

}  // namespace arrow_shm::cli
