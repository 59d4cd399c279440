// The command line of docs/CLI.md (arrow-shm-cpp): options, and what the command files share.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrow_shm/channel.hpp"

namespace arrow_shm::cli {

constexpr const char* kProg = "arrow-shm";

// Status 2, the message on stderr.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// `--help` / `-h`: the usage of the program or of one command, on stdout, status 0.
struct HelpRequest {
  std::string text;
};

struct Options {
  std::string command;
  std::optional<std::string> socket, out;
  std::optional<std::string> store, name;  // put, get, ls, rm: the store's address; NAME
  std::string prefix;                       // ls --prefix
  bool replace = false;                     // put --replace
  bool listen = false, connect = false, print = false, seed_compat = false, allow_unsealed = false;
  bool stream = false;
  std::optional<uint64_t> ring_bytes;
  std::optional<uint64_t> max_inline_bytes;  // send: ChannelOptions::max_inline_bytes
  Validate validate = Validate::Bounds;       // recv, sub, validate: the checks after decoding
  int64_t subscribers = 1;
  KV meta;
  std::optional<int64_t> timeout_ms;
  std::optional<int64_t> count;  // recv: default 1; engine: default forever
  std::vector<std::string> files;
};

// argv -> Options; throws UsageError or HelpRequest (flags.cpp: one table of commands and flags).
Options parse(int argc, char** argv);

// A FILE argument's bytes (- is stdin); an empty one is ERR_INVALID_ARGUMENT.
std::vector<uint8_t> load(const std::string& path);
// "arrow-shm: WHAT CODE: message" on stderr.
void report(const std::string& what, const Error& e);
// The "listening on ADDR" line the tests and scripts wait for, on stderr.
void listening(const std::string& addr);
Timeout timeout(const Options& o);
// --listen: listens on --socket (announcing it) and accepts one channel; else connects to it.
std::unique_ptr<Channel> open_channel(const Options& o, bool listen, ChannelOptions options = {});

// Writes received IPC streams to --out (a file, or DIR/000000.arrows, ...). The path is checked
// before anything is accepted; each file appears complete (a temporary file, then rename). recv.cpp.
class Output {
 public:
  Output(std::optional<std::string> out, int count);
  void write(const uint8_t* data, uint64_t n, int index) const;

 private:
  static std::string parent(const std::string& path);
  std::optional<std::string> out_;
  bool as_dir_ = false;
};

// Prints the summary of docs/CLI.md, with up to 5 first rows as JSON objects like the Node CLI
// (an undecodable table: ERR_IPC_UNSUPPORTED on stderr). recv.cpp.
void print_summary(const ReceivedTable& m, int index);

int cmd_recv(const Options& o);         // recv.cpp
int cmd_send_stream(const Options& o);  // streams.cpp
int cmd_recv_stream(const Options& o);
int cmd_pub(const Options& o);
int cmd_sub(const Options& o);
int cmd_store(const Options& o);  // store.cpp: put, get, ls, rm (a table store's client)

}  // namespace arrow_shm::cli
