// arrow-shm-cpp: the command line of docs/CLI.md over the arrow_shm library (arrow_shm/channel.hpp).
#include "arrow_shm/channel.hpp"
#include "engine.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include <arrow/scalar.h>
#include <arrow/type_traits.h>
#include <sys/socket.h>
#include <sys/stat.h>

using namespace arrow_shm;

namespace {

constexpr const char* kProg = "arrow-shm";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Writes received IPC streams to --out (a file, or DIR/000000.arrows, ...).
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
  std::optional<int64_t> count;  // recv: default 1; engine: default forever
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
  if (argc < 2) throw UsageError("usage: arrow-shm-cpp send|recv|validate|engine ...");
  Options o;
  o.command = argv[1];
  if (o.command != "send" && o.command != "recv" && o.command != "validate" && o.command != "engine")
    throw UsageError("unknown command '" + o.command + "' (send, recv, validate, engine)");
  const bool send = o.command == "send", recv = o.command == "recv", engine = o.command == "engine";
  bool positional_only = false;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    if (positional_only || a == "-" || a.rfind("--", 0) != 0) {
      if (recv || engine) throw UsageError("unrecognized argument: " + a);
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
    if (a == "--socket" && (send || recv || engine)) o.socket = value();
    else if (a == "--timeout-ms" && (send || recv || engine)) o.timeout_ms = parse_int(a, value(), 0);
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
    else if (a == "--count" && (recv || engine)) o.count = parse_int(a, value(), 1);
    else if (a == "--out" && recv) o.out = value();
    else throw UsageError("unrecognized argument: " + std::string(argv[i]));
  }
  if (send && o.files.empty()) throw UsageError("the following arguments are required: FILE");
  if (o.command == "validate" && o.files.size() != 1) throw UsageError("usage: arrow-shm-cpp validate FILE");
  if ((send || recv || engine) && !o.socket && !o.seed_compat) throw UsageError("the following arguments are required: --socket");
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
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw UsageError("no such file: " + path);
    // Sized once: growing by doubling would peak at up to 3x the file on the heap.
    data.resize(static_cast<size_t>(f.tellg()));
    f.seekg(0);
    if (!f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()))) {
      throw Error("ERR_SYSCALL", "cannot read " + path);
    }
  }
  if (data.empty()) throw Error("ERR_INVALID_ARGUMENT", (path == "-" ? std::string("standard input") : path) + " is empty");
  return data;
}

void listening(const std::string& addr) {
  std::cerr << kProg << ": listening on " << addr << std::endl;
}

Timeout timeout(const Options& o) {
  if (!o.timeout_ms) return std::nullopt;
  return std::chrono::milliseconds(*o.timeout_ms);
}

// Removes the seed listener's socket file on every exit path.
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

  // A sending CLI refuses tables sent to it (ERR_IPC_UNSUPPORTED) instead of queueing them.
  ChannelOptions options;
  options.receives_tables = false;
  std::unique_ptr<Channel> ch;
  if (o.listen) {
    Listener listener(*o.socket);
    listening(*o.socket);
    ch = listener.accept(timeout(o), options);
  } else {
    ch = Channel::connect(*o.socket, timeout(o), options);
  }
  for (auto& data : inputs) {
    auto [segment, length] = segment_from_file_bytes(data, 0, /*seal=*/true);
    ch->send_segment(std::move(segment), length, o.meta, timeout(o));
  }
  ch->close();
  return 0;
}

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

// Prints the summary of docs/CLI.md, with up to 5 first rows as JSON objects like the Node CLI
// (an undecodable table: ERR_IPC_UNSUPPORTED on stderr).
void print_summary(const Message& m, int index) {
  std::cout << "== table " << index << ": " << m.ipc->size() << " bytes of Arrow IPC ==\n";
  if (!m.metadata.empty()) {
    std::cout << "metadata: ";
    for (size_t i = 0; i < m.metadata.size(); i++)
      std::cout << (i ? ", " : "") << m.metadata[i].first << "=" << m.metadata[i].second;
    std::cout << "\n";
  }
  if (m.info.unsupported) {
    std::cout.flush();
    std::cerr << kProg << ": " << m.info.unsupported->code() << ": " << m.info.unsupported->what() << std::endl;
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
  auto handle = [&](const Message& m) {
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
      Message m;
      m.info = validate_stream(mapping.data(), length);
      // The rest of the segment is zero padding.
      m.ipc = std::make_shared<MappedBuffer>(std::move(mapping), 0, m.info.end);
      handle(m);
    }
    return 0;
  }

  ChannelOptions options;
  options.allow_unsealed = o.allow_unsealed;
  auto drain = [&](Channel& ch) {
    while (received < count) {
      auto m = ch.receive_message(timeout(o));
      if (!m) return;
      handle(*m);
    }
    ch.close();
  };

  if (o.connect) {
    auto ch = Channel::connect(*o.socket, timeout(o), options);
    drain(*ch);
    if (received < count)
      throw Error("ERR_PEER_CLOSED", "the peer hung up after " + std::to_string(received) + " of " +
                                         std::to_string(count) + " tables");
    return 0;
  }
  Listener listener(*o.socket);
  listening(*o.socket);
  while (received < count) drain(*listener.accept(timeout(o), options));
  return 0;
}

// `engine --socket ADDR [--count N]`: answers symbol-table requests (like peers/rust's engine),
// connection after connection, until N requests were answered (default: forever).
int cmd_engine(const Options& o) {
  Listener listener(*o.socket);
  listening(*o.socket);
  auto answer = [](const Message& request) { return engine_answer(*request.table()); };
  uint64_t served = 0;
  while (!o.count || served < static_cast<uint64_t>(*o.count)) {
    std::unique_ptr<Channel> ch;
    try {
      ch = listener.accept(timeout(o));
    } catch (const Error& e) {
      if (e.code() == "ERR_TIMEOUT" || e.code() == "ERR_SYSCALL") throw;
      std::cerr << kProg << ": " << e.code() << ": " << e.what() << std::endl;
      continue;  // a peer that failed its handshake
    }
    std::optional<uint64_t> left;
    if (o.count) left = static_cast<uint64_t>(*o.count) - served;
    try {
      served += ch->serve(answer, left);
    } catch (const Error& e) {
      if (e.code() != "ERR_PEER_CLOSED") std::cerr << kProg << ": " << e.code() << ": " << e.what() << std::endl;
    }
  }
  return 0;
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
    if (o.command == "engine") return cmd_engine(o);
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
