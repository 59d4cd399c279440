// arrow-shm-cpp: the command line of docs/CLI.md over the arrow_shm library (arrow_shm/channel.hpp).
// flags.cpp parses it, recv.cpp receives tables, streams.cpp has the stream commands.
#include <cerrno>
#include <fstream>
#include <iostream>
#include <iterator>

#include <sys/socket.h>

#include "arrow_shm/channel.hpp"
#include "cli/cli.hpp"
#include "engine.hpp"

using namespace arrow_shm;
using namespace arrow_shm::cli;

namespace arrow_shm::cli {

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

void report(const std::string& what, const Error& e) {
  std::cerr << kProg << ": " << what << e.code() << ": " << e.what() << std::endl;
}

void listening(const std::string& addr) {
  std::cerr << kProg << ": listening on " << addr << std::endl;
}

Timeout timeout(const Options& o) {
  if (!o.timeout_ms) return std::nullopt;
  return std::chrono::milliseconds(*o.timeout_ms);
}

std::unique_ptr<Channel> open_channel(const Options& o, bool listen, ChannelOptions options) {
  if (!listen) return Channel::connect(*o.socket, timeout(o), options);
  Listener listener(*o.socket);
  listening(*o.socket);
  return listener.accept(timeout(o), options);
}

}  // namespace arrow_shm::cli

namespace {

// Removes the seed listener's socket file on every exit path.
struct SocketFileGuard {
  SocketFile file;
  ~SocketFileGuard() { unlink_socket(file); }
};

int cmd_send(const Options& o) {
  std::vector<std::vector<uint8_t>> inputs;
  for (auto& f : o.files) inputs.push_back(load(f));

  if (o.seed_compat) {
    const std::string addr = o.socket.value_or(kDefaultSeedSocket);
    SocketFileGuard guard;
    Fd lst = listen_socket(addr, SOCK_STREAM, &guard.file);
    listening(addr);
    for (auto& data : inputs) {
      OutgoingStream stream = stream_from_file_bytes(data, kSeedSegmentBytes, /*seal=*/false);
      Fd conn = accept_socket(lst.get(), deadline_after_ms(o.timeout_ms));
      send_with_fd(conn.get(), "F", 1, stream.segment.get());
    }
    return 0;
  }

  // A sending CLI refuses tables sent to it (ERR_IPC_UNSUPPORTED) instead of queueing them.
  ChannelOptions options;
  options.receives_tables = false;
  options.receives_streams = false;  // nor streams: it would never read them
  if (o.max_inline_bytes) options.max_inline_bytes = *o.max_inline_bytes;
  auto ch = open_channel(o, o.listen, options);
  for (auto& data : inputs)
    ch->send_stream(stream_from_file_bytes(data, 0, /*seal=*/true, ch->inline_room(o.meta)), o.meta, timeout(o));
  ch->close();
  return 0;
}

// `engine --socket ADDR [--count N]`: answers symbol-table requests (like peers/rust's engine),
// connection after connection, until N requests were answered (default: forever).
int cmd_engine(const Options& o) {
  Listener listener(*o.socket);
  listening(*o.socket);
  auto answer = [](const ReceivedTable& request) { return engine_answer(*request.table()); };
  uint64_t served = 0;
  while (!o.count || served < static_cast<uint64_t>(*o.count)) {
    std::unique_ptr<Channel> ch;
    try {
      ch = listener.accept(timeout(o));
    } catch (const Error& e) {
      if (e.code() == "ERR_TIMEOUT" || e.code() == "ERR_SYSCALL") throw;
      report("", e);
      continue;  // a peer that failed its handshake
    }
    std::optional<uint64_t> left;
    if (o.count) left = static_cast<uint64_t>(*o.count) - served;
    try {
      served += ch->serve(answer, left);
    } catch (const Error& e) {
      if (e.code() != "ERR_PEER_CLOSED") report("", e);
    }
  }
  return 0;
}

// `validate FILE`: the receiver's IPC validation on a file; prints `ok` or the typed error.
int cmd_validate(const Options& o) {
  auto data = load(o.files[0]);
  StreamInfo info = validate_stream(data.data(), data.size(), {}, o.validate);
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
    if (o.command == "put" || o.command == "get" || o.command == "ls" || o.command == "rm") return cmd_store(o);
    return cmd_validate(o);
  } catch (const HelpRequest& help) {
    std::cout << help.text;
    return 0;
  } catch (const UsageError& e) {
    std::cerr << kProg << ": " << e.what() << std::endl;
    return 2;
  } catch (const Error& e) {
    std::cout.flush();
    report("", e);
    return 1;
  } catch (const std::exception& e) {
    std::cerr << kProg << ": unexpected failure: " << e.what() << std::endl;
    return 1;
  }
}
