// arrow-shm-cpp-selftest: the library in one process, over a socketpair with a thread per side.
// Prints one "PASS: name" or "FAIL: name: why" line per check (peers/cpp/test.sh counts them).
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include <arrow/api.h>
#include <sys/socket.h>

#include "arrow_shm/channel.hpp"
#include "engine.hpp"

using namespace arrow_shm;

namespace {

int failures = 0;

void report(const std::string& name, bool ok, const std::string& why = "") {
  if (ok) std::printf("PASS: %s\n", name.c_str());
  else std::printf("FAIL: %s: %s\n", name.c_str(), why.c_str());
  if (!ok) failures++;
  std::fflush(stdout);
}

template <typename T>
T value(arrow::Result<T> r) {
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return std::move(r).ValueOrDie();
}

template <typename Builder, typename V>
std::shared_ptr<arrow::Array> array(std::initializer_list<V> values) {
  Builder b;
  for (const V& v : values)
    if (!b.Append(v).ok()) throw std::runtime_error("append failed");
  return value(b.Finish());
}

// Lines of /proc/self/maps, and whether one of them covers `p`.
struct Maps {
  size_t lines = 0;
  bool covers = false;
};
Maps read_maps(const void* p) {
  Maps m;
  std::ifstream f("/proc/self/maps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  for (std::string line; std::getline(f, line);) {
    m.lines++;
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2 && lo <= at && at < hi) m.covers = true;
  }
  return m;
}

// Every non-empty buffer of `data` (children and dictionaries included) inside [lo, hi).
bool inside(const arrow::ArrayData& data, const uint8_t* lo, const uint8_t* hi, std::string& why) {
  for (auto& b : data.buffers) {
    if (!b || b->size() == 0) continue;
    if (b->data() < lo || b->data() + b->size() > hi) {
      why = data.type->ToString() + " buffer at " + std::to_string(reinterpret_cast<uintptr_t>(b->data())) +
            " is outside the mapping";
      return false;
    }
  }
  for (auto& c : data.child_data)
    if (!inside(*c, lo, hi, why)) return false;
  return !data.dictionary || inside(*data.dictionary, lo, hi, why);
}

std::shared_ptr<arrow::Table> sample_table() {
  auto schema = arrow::schema({arrow::field("n", arrow::int64()), arrow::field("name", arrow::utf8()),
                               arrow::field("x", arrow::float64())});
  return arrow::Table::Make(schema, {array<arrow::Int64Builder, int64_t>({1, 2, 3, 4}),
                                     array<arrow::StringBuilder, std::string>({"a", "bb", "ccc", "dddd"}),
                                     array<arrow::DoubleBuilder, double>({0.5, 1.5, 2.5, 3.5})});
}

std::shared_ptr<arrow::Table> symbol_table() {
  auto schema = arrow::schema({arrow::field("id", arrow::utf8()), arrow::field("fqn", arrow::utf8()),
                               arrow::field("kind", arrow::uint8()), arrow::field("file_id", arrow::uint16()),
                               arrow::field("start_line", arrow::uint32()), arrow::field("start_col", arrow::uint16()),
                               arrow::field("end_line", arrow::uint32()), arrow::field("end_col", arrow::uint16())});
  return arrow::Table::Make(
      schema, {array<arrow::StringBuilder, std::string>({"s1", "s2", "s3"}),
               array<arrow::StringBuilder, std::string>({"a.f", "a.g", "b.h"}),
               array<arrow::UInt8Builder, uint8_t>({1, 2, 1}), array<arrow::UInt16Builder, uint16_t>({7, 7, 9}),
               array<arrow::UInt32Builder, uint32_t>({10, 4, 30}), array<arrow::UInt16Builder, uint16_t>({0, 0, 0}),
               array<arrow::UInt32Builder, uint32_t>({12, 20, 31}), array<arrow::UInt16Builder, uint16_t>({1, 1, 1})});
}

void run() {
  const Timeout timeout = std::chrono::seconds(10);
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_errno("socketpair", errno);
  std::unique_ptr<Channel> server;
  std::thread accepting([&] { server = Channel::accept(Fd(pair[1]), timeout); });
  auto client = Channel::handshake(Fd(pair[0]), timeout);
  accepting.join();
  report("handshake over a socketpair", client && server);

  // 1. send -> receive, zero copy
  auto sent = sample_table();
  std::thread sending([&] { client->send(*sent, {{"name", "selftest"}}, timeout); });
  auto message = server->receive_message(timeout);
  sending.join();
  if (!message) return report("receive a table", false, "the peer went away");
  auto table = message->table();
  report("received table equals the sent one", table->Equals(*sent), table->ToString());
  report("metadata arrives", message->metadata == KV{{"name", "selftest"}});

  const uint8_t* lo = message->ipc->mapping_data();
  const uint8_t* hi = lo + message->ipc->mapping_size();
  bool all_inside = true;
  std::string why;
  for (auto& column : table->columns())
    for (auto& chunk : column->chunks()) all_inside = all_inside && inside(*chunk->data(), lo, hi, why);
  report("every column buffer lies inside the received mapping (zero copy)", all_inside, why);

  // 2. the mapping lives exactly as long as something references it
  const Maps mapped = read_maps(lo);
  report("the segment is mapped while the table lives", mapped.covers);
  auto kept = table->column(1);
  table.reset();
  message.reset();
  report("a column alone keeps the mapping alive", read_maps(lo).covers);
  kept.reset();
  const Maps after = read_maps(lo);
  report("dropping the last column unmaps the segment", !after.covers && after.lines < mapped.lines,
         std::to_string(mapped.lines) + " -> " + std::to_string(after.lines) + " lines of /proc/self/maps");

  // 3. request / response: an error answer, then the engine's summary
  uint64_t served = 0;
  std::thread serving([&] {
    served = server->serve([](const Message& m) { return engine_answer(*m.table()); }, 2);
  });
  try {
    client->request(*sample_table(), timeout);
    report("a failing request throws the responder's error", false, "no error");
  } catch (const Error& e) {
    report("a failing request throws the responder's error", e.code() == "ERR_INVALID_ARGUMENT", e.code());
  }
  auto response = client->request(*symbol_table(), timeout);
  serving.join();
  report("serve answered both requests", served == 2, std::to_string(served));
  // file_id 7: 2 symbols, lines 4..20; file_id 9: 1, 30..31; kind 1: 2, 10..31; kind 2: 1, 4..20
  auto expected = arrow::Table::Make(
      response->schema(),
      {array<arrow::StringBuilder, std::string>({"file_id", "file_id", "kind", "kind"}),
       array<arrow::UInt32Builder, uint32_t>({7, 9, 1, 2}), array<arrow::UInt64Builder, uint64_t>({2, 1, 2, 1}),
       array<arrow::UInt32Builder, uint32_t>({4, 30, 10, 4}), array<arrow::UInt32Builder, uint32_t>({20, 31, 31, 20})});
  report("request returns the engine's summary", response->Equals(*expected), response->ToString());

  // 4. GOODBYE ends the peer's receive
  client->close();
  try {
    server->receive(timeout);
    report("receive after the peer's GOODBYE throws ERR_PEER_CLOSED", false, "a table arrived");
  } catch (const Error& e) {
    report("receive after the peer's GOODBYE throws ERR_PEER_CLOSED", e.code() == "ERR_PEER_CLOSED", e.code());
  }
}

}  // namespace

int main() {
  try {
    run();
  } catch (const Error& e) {
    report("selftest", false, e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    report("selftest", false, e.what());
  }
  return failures ? 1 : 0;
}
