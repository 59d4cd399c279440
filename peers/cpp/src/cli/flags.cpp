// One table of the commands and one of the flags: the parser and every --help text come from them.
#include <sys/stat.h>

#include "arrow_shm/stream.hpp"
#include "cli.hpp"

namespace arrow_shm::cli {

namespace {

enum : unsigned { kSend = 1, kRecv = 2, kPub = 4, kSub = 8, kValidate = 16, kEngine = 32 };
enum : unsigned { kPut = 64, kGet = 128, kLs = 256, kRm = 512 };  // a table store's client (§15)
constexpr unsigned kNetworked = kSend | kRecv | kPub | kSub | kEngine;  // they all take --socket
constexpr unsigned kStore = kPut | kGet | kLs | kRm;                   // a table store's client: --store
constexpr unsigned kNamed = kPut | kGet | kRm;                         // a NAME argument first

struct Command {
  const char* name;
  unsigned bit;
  const char* args;     // after the name in its usage line
  const char* summary;  // the line in the program's help and under the command's usage
};

constexpr Command kCommands[] = {
    {"send", kSend, "[options] <files...>", "send each FILE (Arrow IPC stream or file, - for stdin) as one table"},
    {"recv", kRecv, "[options]", "receive tables; write them as IPC stream files and/or print a summary"},
    {"pub", kPub, "[options] <files...>", "publish every batch of the FILEs once N subscribers have joined"},
    {"sub", kSub, "[options]", "subscribe to a publication and write what it publishes as one IPC stream file"},
    {"validate", kValidate, "<file>", "run the receiver's IPC checks on FILE: ok, or the typed error"},
    {"engine", kEngine, "[options]", "answer symbol-table requests, connection after connection"},
    {"put", kPut, "[options] <name> <file>", "put FILE (Arrow IPC stream or file, - for stdin) into a store under NAME"},
    {"get", kGet, "[options] <name>", "get NAME from a store; write it as an IPC stream file and/or print a summary"},
    {"ls", kLs, "[options]", "list a store: one line per name (name, bytes, rows, age)"},
    {"rm", kRm, "[options] <name>", "delete NAME from a store (readers keep what they have)"},
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

void set_meta(Options& o, const std::string&, const std::string& kv) {
  auto eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) throw UsageError("--meta expects KEY=VALUE, got '" + kv + "'");
  const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
  for (auto& [k, v] : o.meta)
    if (k == key) return void(v = value);
  o.meta.emplace_back(key, value);
}

void set_ring_bytes(Options& o, const std::string& flag, const std::string& v) {
  const int64_t n = parse_int(flag, v, 1);
  if (n < static_cast<int64_t>(kMinRingCapacity) || static_cast<uint64_t>(n) > kMaxRingCapacity || (n & (n - 1)))
    throw UsageError("argument --ring-bytes: expected a power of two, at least 65536 (at most 2^40)");
  o.ring_bytes = static_cast<uint64_t>(n);
}

void set_validate(Options& o, const std::string& flag, const std::string& v) {
  try {
    o.validate = parse_validate(v);
  } catch (const Error&) {
    throw UsageError("argument " + flag + ": expected bounds, full or framing, got '" + v + "'");
  }
}

// A flag: `arg` null for a switch. The same flag may have a row per set of commands (other help).
struct Flag {
  const char* name;
  const char* arg;
  unsigned commands;
  const char* help;
  void (*set)(Options& o, const std::string& flag, const std::string& value);
};

#define SWITCH(field) [](Options& o, const std::string&, const std::string&) { o.field = true; }
#define INT(field, min) [](Options& o, const std::string& f, const std::string& v) { o.field = parse_int(f, v, min); }
#define TEXT(field) [](Options& o, const std::string&, const std::string& v) { o.field = v; }

const Flag kFlags[] = {
    {"--socket", "<addr>", kNetworked, "socket path, or @name for an abstract socket", TEXT(socket)},
    {"--listen", nullptr, kSend, "listen for the receiver instead of connecting", SWITCH(listen)},
    {"--connect", nullptr, kRecv, "connect to the sender instead of listening", SWITCH(connect)},
    {"--subscribers", "<n>", kPub, "subscribers to wait for (default: 1)", INT(subscribers, 1)},
    {"--count", "<n>", kRecv, "number of tables to receive (default: 1)", INT(count, 1)},
    {"--count", "<n>", kEngine, "requests to answer (default: forever)", INT(count, 1)},
    {"--out", "<path>", kRecv, "FILE for one table, or DIR for DIR/000000.arrows, ...", TEXT(out)},
    {"--out", "<file>", kSub, "write the stream to FILE", TEXT(out)},
    {"--print", nullptr, kRecv, "print schema, rows, metadata and the first rows", SWITCH(print)},
    {"--print", nullptr, kSub, "print schema and row counts", SWITCH(print)},
    {"--seed-compat", nullptr, kSend,
     "speak the seed proof of concept's protocol (listen, send 'F' + unsealed memfd)", SWITCH(seed_compat)},
    {"--seed-compat", nullptr, kRecv,
     "speak the seed proof of concept's protocol (connect, accept an unsealed memfd)", SWITCH(seed_compat)},
    {"--allow-unsealed", nullptr, kRecv, "accept segments without seals (unsafe with untrusted senders)",
     SWITCH(allow_unsealed)},
    {"--meta", "<key=value>", kSend, "user metadata for every message (repeatable)", set_meta},
    {"--meta", "<key=value>", kPub, "user metadata for the stream (repeatable)", set_meta},
    {"--timeout-ms", "<n>", kNetworked & ~kEngine, "give up after N ms", INT(timeout_ms, 0)},
    {"--timeout-ms", "<n>", kEngine, "give up waiting for a connection after N ms", INT(timeout_ms, 0)},
    {"--stream", nullptr, kSend, "send every batch of the FILEs as one stream through a shared ring", SWITCH(stream)},
    {"--stream", nullptr, kRecv, "receive one stream; --out writes it as one IPC stream file", SWITCH(stream)},
    {"--ring-bytes", "<n>", kSend, "ring capacity for --stream (a power of two)", set_ring_bytes},
    {"--ring-bytes", "<n>", kPub, "ring capacity (a power of two)", set_ring_bytes},
    {"--validate", "<bounds|full|framing>", kRecv | kSub | kValidate,
     "checks after decoding: bounds (default: every offset, index and length; no UTF-8 scan), full "
     "(also the UTF-8 of every string), framing (none: trusted senders only)",
     set_validate},
    {"--store", "<addr>", kStore, "the store's socket path or @name", TEXT(store)},
    {"--meta", "<key=value>", kPut, "user metadata (repeatable)", set_meta},
    {"--replace", nullptr, kPut, "make a new version if NAME exists", SWITCH(replace)},
    {"--out", "<file>", kGet, "write the table to FILE", TEXT(out)},
    {"--print", nullptr, kGet, "print schema, rows, metadata and the first rows", SWITCH(print)},
    {"--prefix", "<prefix>", kLs, "only names starting with PREFIX", TEXT(prefix)},
    {"--timeout-ms", "<n>", kPut | kLs | kRm, "give up connecting after N ms", INT(timeout_ms, 1)},
    {"--timeout-ms", "<n>", kGet, "wait up to N ms for NAME to be put", INT(timeout_ms, 1)},
    {"--max-inline-bytes", "<n>", kSend,
     "send IPC streams up to N bytes inside the TABLE frame when they fit (default: 65536; 0: never)",
     INT(max_inline_bytes, 0)},
};

#undef SWITCH
#undef INT
#undef TEXT

// Rows of "  LEFT  help", the help wrapped at 80 columns under its own column.
std::string table(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 0;
  for (auto& [left, help] : rows) width = std::max(width, left.size());
  std::string out;
  for (auto& [left, help] : rows) {
    std::string line = "  " + left + std::string(width - left.size() + 2, ' ');
    const size_t indent = line.size();
    size_t col = indent;
    for (size_t at = 0; at < help.size();) {
      size_t end = help.find(' ', at);
      if (end == std::string::npos) end = help.size();
      const std::string word = help.substr(at, end - at);
      if (col > indent && col + 1 + word.size() > 80) line += "\n" + std::string(indent, ' '), col = indent;
      else if (col > indent) line += ' ', col++;
      line += word, col += word.size();
      at = end + 1;
    }
    out += line + "\n";
  }
  return out;
}

const char* const kUsage = "Usage: arrow-shm-cpp ";

std::string main_help() {
  std::vector<std::pair<std::string, std::string>> commands;
  for (auto& c : kCommands) commands.emplace_back(std::string(c.name) + " " + c.args, c.summary);
  return std::string(kUsage) +
         "[options] [command]\n\nHand Apache Arrow tables to another process through sealed shared memory,\n"
         "zero-copy (the C++ peer of arrow-shm).\n\nOptions:\n" +
         table({{"-h, --help", "display help for command"}}) + "\nCommands:\n" + table(commands);
}

std::string command_help(const Command& c) {
  std::vector<std::pair<std::string, std::string>> flags;
  for (auto& f : kFlags)
    if (f.commands & c.bit) flags.emplace_back(std::string(f.name) + (f.arg ? std::string(" ") + f.arg : ""), f.help);
  flags.emplace_back("-h, --help", "display help for command");
  return std::string(kUsage) + c.name + " " + c.args + "\n\n" + c.summary + "\n\nOptions:\n" + table(flags);
}

}  // namespace

Options parse(int argc, char** argv) {
  if (argc < 2) throw UsageError("usage: arrow-shm-cpp send|recv|pub|sub|validate|engine|put|get|ls|rm ... (--help for more)");
  Options o;
  o.command = argv[1];
  const bool help_command = o.command == "help";
  if (o.command == "--help" || o.command == "-h" || help_command) {
    if (help_command && argc > 2) o.command = argv[2];
    else throw HelpRequest{main_help()};
  }
  const Command* command = nullptr;
  for (auto& c : kCommands)
    if (o.command == c.name) command = &c;
  if (!command)
    throw UsageError("unknown command '" + o.command + "' (send, recv, pub, sub, validate, engine, put, get, ls, rm)");
  if (help_command) throw HelpRequest{command_help(*command)};
  for (int i = 2; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--") break;
    if (a == "--help" || a == "-h") throw HelpRequest{command_help(*command)};
  }
  const unsigned bit = command->bit;
  const bool takes_files = bit & (kSend | kPub | kValidate | kPut);
  bool positional_only = false;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    if (positional_only || a == "-" || a.rfind("--", 0) != 0) {
      if ((bit & kNamed) && !o.name) {
        o.name = a;
        continue;
      }
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
    const Flag* flag = nullptr;
    for (auto& f : kFlags)
      if (a == f.name && (f.commands & bit)) flag = &f;
    if (!flag || (!flag->arg && inline_value)) throw UsageError("unrecognized argument: " + std::string(argv[i]));
    std::string value;
    if (flag->arg && inline_value) value = *inline_value;
    else if (flag->arg && i + 1 >= argc) throw UsageError("argument " + a + ": expected one argument");
    else if (flag->arg) value = argv[++i];
    flag->set(o, a, value);
  }
  if ((bit & (kSend | kPub)) && o.files.empty()) throw UsageError("the following arguments are required: FILE");
  if (bit == kValidate && o.files.size() != 1) throw UsageError("usage: arrow-shm-cpp validate FILE");
  if ((bit & kNamed) && !o.name) throw UsageError("the following arguments are required: NAME");
  if (bit == kPut && o.files.size() != 1) throw UsageError("usage: arrow-shm-cpp put --store ADDR NAME FILE");
  if ((bit & kStore) && !o.store) throw UsageError("the following arguments are required: --store");
  if ((bit & kNetworked) && !o.socket && !o.seed_compat)
    throw UsageError("the following arguments are required: --socket");
  if (o.stream && o.seed_compat) throw UsageError("--stream and --seed-compat do not go together");
  if (bit == kRecv && o.stream && o.count.value_or(1) != 1) throw UsageError("--stream receives one stream: no --count");
  for (auto& f : o.files) {
    struct stat st {};
    if (f != "-" && (::stat(f.c_str(), &st) != 0 || !S_ISREG(st.st_mode))) throw UsageError("no such file: " + f);
  }
  return o;
}

}  // namespace arrow_shm::cli
