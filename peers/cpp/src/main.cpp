// arrow-shm-cpp: the command line of docs/CLI.md over the arrow_shm library (arrow_shm/channel.hpp).
#include "arrow_shm/channel.hpp"
#include "arrow_shm/stream.hpp"
#include "engine.hpp"
#include "ipc_internal.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <fstream>
#include <iostream>
#include <iterator>

#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>
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

// `--help` / `-h`: the usage of the program or of one command, on stdout, status 0.
struct HelpRequest {
  std::string text;
};

const char* const kMainHelp = R"(Usage: arrow-shm-cpp [options] [command]

Hand Apache Arrow tables to another process through sealed shared memory,
zero-copy (the C++ peer of arrow-shm).

Options:
  -h, --help                 display help for command

Commands:
  send [options] <files...>  send each FILE (Arrow IPC stream or file, - for
                             stdin) as one table
  recv [options]             receive tables; write them as IPC stream files
                             and/or print a summary
  pub [options] <files...>   publish every batch of the FILEs once N subscribers
                             have joined
  sub [options]              subscribe to a publication and write what it
                             publishes as one IPC stream file
  validate <file>            run the receiver's IPC checks on FILE: ok, or the
                             typed error
  engine [options]           answer symbol-table requests
)";

const char* const kSendHelp = R"(Usage: arrow-shm-cpp send [options] <files...>

send each FILE (Arrow IPC stream or file, - for stdin) as one table

Options:
  --socket <addr>     socket path, or @name for an abstract socket
  --listen            listen for the receiver instead of connecting
  --seed-compat       speak the seed proof of concept's protocol (listen, send
                      'F' + unsealed memfd)
  --meta <key=value>  user metadata for every message (repeatable)
  --timeout-ms <n>    give up after N ms
  --stream            send every batch of the FILEs as one stream through a
                      shared ring
  --ring-bytes <n>    ring capacity for --stream (a power of two)
  -h, --help          display help for command
)";

const char* const kRecvHelp = R"(Usage: arrow-shm-cpp recv [options]

receive tables; write them as IPC stream files and/or print a summary

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --connect         connect to the sender instead of listening
  --count <n>       number of tables to receive (default: 1)
  --out <path>      FILE for one table, or DIR for DIR/000000.arrows, ...
  --print           print schema, rows, metadata and the first rows
  --seed-compat     speak the seed proof of concept's protocol (connect, accept
                    an unsealed memfd)
  --allow-unsealed  accept segments without seals (unsafe with untrusted
                    senders)
  --timeout-ms <n>  give up after N ms
  --stream          receive one stream; --out writes it as one IPC stream file
  -h, --help        display help for command
)";

const char* const kPubHelp = R"(Usage: arrow-shm-cpp pub [options] <files...>

publish every batch of the FILEs once N subscribers have joined

Options:
  --socket <addr>     socket path, or @name for an abstract socket
  --subscribers <n>   subscribers to wait for (default: 1)
  --meta <key=value>  user metadata for the stream (repeatable)
  --ring-bytes <n>    ring capacity (a power of two)
  --timeout-ms <n>    give up after N ms
  -h, --help          display help for command
)";

const char* const kSubHelp = R"(Usage: arrow-shm-cpp sub [options]

subscribe to a publication and write what it publishes as one IPC stream file

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --out <file>      write the stream to FILE
  --print           print schema and row counts
  --timeout-ms <n>  give up after N ms
  -h, --help        display help for command
)";

const char* const kValidateHelp = R"(Usage: arrow-shm-cpp validate <file>

run the receiver's IPC checks on FILE: prints ok, or the typed error (status 1)

Options:
  -h, --help  display help for command
)";

const char* const kEngineHelp = R"(Usage: arrow-shm-cpp engine [options]

answer symbol-table requests, connection after connection

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --count <n>       requests to answer (default: forever)
  --timeout-ms <n>  give up waiting for a connection after N ms
  -h, --help        display help for command
)";

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
  bool stream = false;
  std::optional<uint64_t> ring_bytes;
  int64_t subscribers = 1;
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
  if (argc < 2) throw UsageError("usage: arrow-shm-cpp send|recv|pub|sub|validate|engine ... (--help for more)");
  Options o;
  o.command = argv[1];
  if (o.command == "--help" || o.command == "-h" || o.command == "help") {
    if (o.command == "help" && argc > 2) o.command = argv[2];
    else throw HelpRequest{kMainHelp};
  }
  const std::map<std::string, const char*> helps = {{"send", kSendHelp}, {"recv", kRecvHelp},
                                                    {"pub", kPubHelp},   {"sub", kSubHelp},
                                                    {"validate", kValidateHelp}, {"engine", kEngineHelp}};
  auto help = helps.find(o.command);
  if (help == helps.end())
    throw UsageError("unknown command '" + o.command + "' (send, recv, pub, sub, validate, engine)");
  if (std::string(argv[1]) == "help") throw HelpRequest{help->second};
  for (int i = 2; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--") break;
    if (a == "--help" || a == "-h") throw HelpRequest{help->second};
  }
  const bool send = o.command == "send", recv = o.command == "recv", engine = o.command == "engine";
  const bool pub = o.command == "pub", sub = o.command == "sub";
  const bool takes_files = send || pub || o.command == "validate";
  bool positional_only = false;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    if (positional_only || a == "-" || a.rfind("--", 0) != 0) {
      if (!takes_files) throw UsageError("unrecognized argument: " + a);
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
    if (a == "--socket" && (send || recv || engine || pub || sub)) o.socket = value();
    else if (a == "--timeout-ms" && (send || recv || engine || pub || sub)) o.timeout_ms = parse_int(a, value(), 0);
    else if (a == "--seed-compat") flag(send || recv, o.seed_compat);
    else if (a == "--listen") flag(send, o.listen);
    else if (a == "--stream") flag(send || recv, o.stream);
    else if (a == "--meta" && (send || pub)) {
      std::string kv = value();
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("--meta expects KEY=VALUE, got '" + kv + "'");
      std::string k = kv.substr(0, eq);
      bool replaced = false;
      for (auto& [key, v] : o.meta)
        if (key == k) v = kv.substr(eq + 1), replaced = true;
      if (!replaced) o.meta.emplace_back(k, kv.substr(eq + 1));
    } else if (a == "--ring-bytes" && (send || pub)) {
      const int64_t n = parse_int(a, value(), 1);
      if (n < static_cast<int64_t>(kMinRingCapacity) || static_cast<uint64_t>(n) > kMaxRingCapacity || (n & (n - 1)))
        throw UsageError("argument --ring-bytes: expected a power of two, at least 65536 (at most 2^40)");
      o.ring_bytes = static_cast<uint64_t>(n);
    } else if (a == "--subscribers" && pub) o.subscribers = parse_int(a, value(), 1);
    else if (a == "--connect") flag(recv, o.connect);
    else if (a == "--print") flag(recv || sub, o.print);
    else if (a == "--allow-unsealed") flag(recv, o.allow_unsealed);
    else if (a == "--count" && (recv || engine)) o.count = parse_int(a, value(), 1);
    else if (a == "--out" && (recv || sub)) o.out = value();
    else throw UsageError("unrecognized argument: " + std::string(argv[i]));
  }
  if ((send || pub) && o.files.empty()) throw UsageError("the following arguments are required: FILE");
  if (o.command == "validate" && o.files.size() != 1) throw UsageError("usage: arrow-shm-cpp validate FILE");
  if ((send || recv || engine || pub || sub) && !o.socket && !o.seed_compat)
    throw UsageError("the following arguments are required: --socket");
  if (o.stream && o.seed_compat) throw UsageError("--stream and --seed-compat do not go together");
  if (recv && o.stream && o.count.value_or(1) != 1) throw UsageError("--stream receives one stream: no --count");
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
  options.receives_streams = false;  // nor streams: it would never read them
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
  options.receives_streams = false;  // a stream needs --stream: refused rather than left waiting
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

// ---------------------------------------------------------------------------------------------
// Streams (docs/CLI.md, Streams)

// Every batch of every FILE, in order (validated); the FILEs must share one schema. The batches
// point into `data`, which therefore lives as long as they do.
struct Batches {
  std::vector<std::vector<uint8_t>> data;
  std::shared_ptr<arrow::Schema> schema;
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
};

template <typename T>
T unwrap_ipc(arrow::Result<T> r) {
  if (!r.ok()) throw ipc_error(r.status());
  return std::move(r).ValueOrDie();
}

Batches batches_of(const std::vector<std::string>& files) {
  Batches out;
  for (auto& file : files) {
    auto& bytes = out.data.emplace_back(load(file));
    auto input = std::make_shared<arrow::io::BufferReader>(arrow::Buffer::Wrap(bytes.data(), bytes.size()));
    std::shared_ptr<arrow::Schema> schema;
    std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
    if (bytes.size() >= 6 && std::memcmp(bytes.data(), "ARROW1", 6) == 0) {
      auto reader = unwrap_ipc(arrow::ipc::RecordBatchFileReader::Open(input));
      schema = reader->schema();
      for (int i = 0; i < reader->num_record_batches(); i++) batches.push_back(unwrap_ipc(reader->ReadRecordBatch(i)));
    } else {
      validate_stream(bytes.data(), bytes.size());  // the receiver's framing checks first: typed errors
      auto reader = unwrap_ipc(arrow::ipc::RecordBatchStreamReader::Open(input));
      schema = reader->schema();
      for (;;) {
        std::shared_ptr<arrow::RecordBatch> batch;
        auto st = reader->ReadNext(&batch);
        if (!st.ok()) throw ipc_error(st);
        if (!batch) break;
        batches.push_back(std::move(batch));
      }
    }
    for (auto& b : batches) validate_batch(*b);
    if (out.schema && !schema->Equals(*out.schema, /*check_metadata=*/false))
      throw Error("ERR_INVALID_ARGUMENT", file + " has another schema than the files before it: one stream has one schema");
    if (!out.schema) out.schema = schema;
    out.batches.insert(out.batches.end(), batches.begin(), batches.end());
  }
  return out;
}

StreamWriterOptions stream_options(const Options& o) {
  StreamWriterOptions options;
  options.capacity_bytes = o.ring_bytes.value_or(kDefaultRingCapacity);
  options.metadata = o.meta;
  options.write_timeout = timeout(o);
  return options;
}

std::string schema_text(const arrow::Schema& schema) {
  std::string out;
  for (int i = 0; i < schema.num_fields(); i++)
    out += (i ? ", " : "") + schema.field(i)->name() + ": " + schema.field(i)->type()->ToString();
  return out;
}

// Reads a whole stream; --out gets the prologue, every record's messages, the end-of-stream marker.
void drain(StreamReader& reader, const Options& o) {
  std::ofstream out;
  auto put = [&](const uint8_t* p, int64_t n) {
    if (!o.out) return;
    out.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
    if (!out) throw Error("ERR_SYSCALL", "cannot write " + *o.out);
  };
  if (o.out) {
    out.open(*o.out, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("ERR_SYSCALL", "cannot open " + *o.out);
  }
  put(reader.prologue()->data(), reader.prologue()->size());
  int64_t rows = 0, batches = 0;
  while (auto batch = reader.read()) {
    put(batch->data->data(), batch->data->size());
    rows += batch->batch->num_rows();
    batches++;
    batch->release();
  }
  static const uint8_t kEndOfStream[8] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  put(kEndOfStream, sizeof kEndOfStream);
  if (o.out) {
    out.close();
    if (!out) throw Error("ERR_SYSCALL", "cannot write " + *o.out);
  }
  reader.close();
  if (!o.print) return;
  std::cout << "== stream: " << batches << " batches ==\n";
  if (!reader.metadata().empty()) {
    std::cout << "metadata: ";
    for (size_t i = 0; i < reader.metadata().size(); i++)
      std::cout << (i ? ", " : "") << reader.metadata()[i].first << "=" << reader.metadata()[i].second;
    std::cout << "\n";
  }
  std::cout << "schema: " << schema_text(*reader.schema()) << "\n";
  std::cout << "rows: " << rows << ", columns: " << reader.schema()->num_fields() << ", batches: " << batches
            << std::endl;
}

// `send --stream`: every batch of the FILEs as one stream, then END; exits once all is released.
int cmd_send_stream(const Options& o) {
  Batches input = batches_of(o.files);
  ChannelOptions options;
  options.receives_tables = false;
  options.receives_streams = false;
  std::unique_ptr<Channel> ch;
  if (o.listen) {
    Listener listener(*o.socket);
    listening(*o.socket);
    ch = listener.accept(timeout(o), options);
  } else {
    ch = Channel::connect(*o.socket, timeout(o), options);
  }
  auto writer = StreamWriter::open(*ch, input.schema, stream_options(o));
  try {
    for (auto& batch : input.batches) writer->write(*batch);
    writer->close(timeout(o));
  } catch (...) {
    writer->abort();
    throw;
  }
  ch->close();
  return 0;
}

// `recv --stream`: one stream from one connection.
int cmd_recv_stream(const Options& o) {
  std::unique_ptr<Channel> ch;
  if (o.connect) {
    ch = Channel::connect(*o.socket, timeout(o));
  } else {
    Listener listener(*o.socket);
    listening(*o.socket);
    ch = listener.accept(timeout(o));
  }
  StreamReaderOptions options;
  options.read_timeout = timeout(o);
  auto reader = StreamReader::accept(*ch, timeout(o), options);
  drain(*reader, o);
  reader.reset();
  ch->close();
  return 0;
}

// `pub`: waits for N subscribers, publishes every batch once, ends, waits for them.
int cmd_pub(const Options& o) {
  Batches input = batches_of(o.files);
  Publication publication(*o.socket, input.schema, stream_options(o));
  listening(*o.socket);
  try {
    publication.wait_for_subscribers(static_cast<size_t>(o.subscribers), timeout(o));
    for (auto& batch : input.batches) publication.write(*batch);
    publication.close(timeout(o));
  } catch (...) {
    publication.abort();
    throw;
  }
  return 0;
}

// `sub`: connects (retrying until the publication is up, within --timeout-ms), subscribes, drains.
int cmd_sub(const Options& o) {
  // Without --timeout-ms it retries "forever" (a year), like the Node CLI.
  const Timeout connect_timeout = o.timeout_ms ? timeout(o) : Timeout(std::chrono::hours(24 * 365));
  auto ch = Channel::connect(*o.socket, connect_timeout);
  auto reader = subscribe_on(*ch, {}, timeout(o));
  drain(*reader, o);
  reader.reset();
  ch->close();
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
    if (o.command == "send") return o.stream ? cmd_send_stream(o) : cmd_send(o);
    if (o.command == "recv") return o.stream ? cmd_recv_stream(o) : cmd_recv(o);
    if (o.command == "pub") return cmd_pub(o);
    if (o.command == "sub") return cmd_sub(o);
    if (o.command == "engine") return cmd_engine(o);
    return cmd_validate(o);
  } catch (const HelpRequest& help) {
    std::cout << help.text;
    return 0;
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
