// arrow-shm-cpp-selftest: the library in one process, over a socketpair with a thread per side.
// Prints one "PASS: name" or "FAIL: name: why" line per check (peers/cpp/test.sh counts them).
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>
#include <arrow/ipc/writer.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "report.hpp"
#include "arrow_shm/channel.hpp"
#include "arrow_shm/stream.hpp"
#include "engine.hpp"
#include "stream/internal.hpp"

using namespace arrow_shm;

namespace {

using arrow_shm_test::failures;
using arrow_shm_test::report;

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
  ChannelOptions segments_only;  // this part is about segments: no inline tables (§5.3)
  segments_only.max_inline_bytes = 0;
  auto client = Channel::handshake(Fd(pair[0]), timeout, segments_only);
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

  auto segment = std::dynamic_pointer_cast<MappedBuffer>(message->ipc);
  report("max_inline_bytes 0: the table came in a segment", segment && !message->is_inline());
  if (!segment) return;
  const uint8_t* lo = segment->mapping_data();
  const uint8_t* hi = lo + segment->mapping_size();
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
  segment.reset();
  report("a column alone keeps the mapping alive", read_maps(lo).covers);
  kept.reset();
  const Maps after = read_maps(lo);
  report("dropping the last column unmaps the segment", !after.covers && after.lines < mapped.lines,
         std::to_string(mapped.lines) + " -> " + std::to_string(after.lines) + " lines of /proc/self/maps");

  // 3. request / response: an error answer, then the engine's summary
  uint64_t served = 0;
  std::thread serving([&] {
    served = server->serve([](const ReceivedTable& m) { return engine_answer(*m.table()); }, 2);
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


// ---------------------------------------------------------------------------------------------
// Streams (§12): a C++ producer and a C++ consumer over a socketpair, a thread each.

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) n++;
  return n;
}

std::string gold_dir() {
  if (const char* env = std::getenv("ARROW_GOLD")) return env;
  // <repo>/.build/cpp*/arrow-shm-cpp-selftest -> <repo>/../shared/testdata/arrow-gold
  auto exe = std::filesystem::read_symlink("/proc/self/exe");
  return (exe.parent_path().parent_path().parent_path().parent_path() / "shared/testdata/arrow-gold").string();
}

std::shared_ptr<arrow::Table> read_stream_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw std::runtime_error("cannot read " + path);
  auto buffer = arrow::Buffer::FromString(std::move(bytes));
  auto reader = value(arrow::ipc::RecordBatchStreamReader::Open(std::make_shared<arrow::io::BufferReader>(buffer)));
  return value(reader->ToTable());
}

// Every buffer of `data` except the dictionaries' (copied out of the ring by design) inside [lo, hi).
bool inside_except_dictionaries(const arrow::ArrayData& data, const uint8_t* lo, const uint8_t* hi, std::string& why) {
  for (auto& b : data.buffers) {
    if (!b || b->size() == 0) continue;
    if (b->data() < lo || b->data() + b->size() > hi) {
      why = data.type->ToString() + " buffer outside the ring's data area";
      return false;
    }
  }
  for (auto& c : data.child_data)
    if (!inside_except_dictionaries(*c, lo, hi, why)) return false;
  return true;
}

struct StreamPair {
  std::unique_ptr<Channel> producer_side, consumer_side;  // destroyed last
  std::unique_ptr<StreamWriter> writer;
  std::unique_ptr<StreamReader> reader;
};

StreamPair open_stream_pair(const std::shared_ptr<arrow::Schema>& schema, StreamWriterOptions options) {
  const Timeout timeout = std::chrono::seconds(10);
  StreamPair p;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) throw_errno("socketpair", errno);
  std::thread accepting([&] { p.consumer_side = Channel::accept(Fd(fds[1]), timeout); });
  p.producer_side = Channel::handshake(Fd(fds[0]), timeout);
  accepting.join();
  std::exception_ptr failure;
  std::thread opening([&] {
    try {
      p.writer = StreamWriter::open(*p.producer_side, schema, options);
    } catch (...) {
      failure = std::current_exception();
    }
  });
  StreamReaderOptions reader_options;
  reader_options.read_timeout = timeout;
  try {
    p.reader = StreamReader::accept(*p.consumer_side, timeout, reader_options);
  } catch (...) {
    opening.join();
    throw;
  }
  opening.join();
  if (failure) std::rethrow_exception(failure);
  return p;
}

// Writes `batches` from a thread and ends the stream; reads everything here. Returns what was read.
struct StreamRun {
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  bool zero_copy = true;
  std::string why;
  std::optional<Error> producer_error;
};

StreamRun run_stream(StreamPair& p, const std::vector<std::shared_ptr<arrow::RecordBatch>>& batches) {
  StreamRun run;
  std::thread producing([&] {
    try {
      for (auto& b : batches) p.writer->write(*b);
      p.writer->close(std::chrono::seconds(10));
    } catch (const Error& e) {
      run.producer_error = e;
      p.writer->abort();
    }
  });
  const uint8_t* lo = p.reader->data_area();
  const uint8_t* hi = lo + p.reader->capacity();
  try {
    while (auto batch = p.reader->read()) {
      // Only BATCH records lie in the ring; EXTERNAL ones are in their own segment.
      if (static_cast<uint64_t>(batch->data->size()) < p.reader->capacity() / 4 && batch->data->data() >= lo &&
          batch->data->data() < hi)
        for (auto& column : batch->batch->columns())
          run.zero_copy = inside_except_dictionaries(*column->data(), lo, hi, run.why) && run.zero_copy;
      run.batches.push_back(batch->batch);
      // Keep a copy-free reference for comparison only after the stream: copy it now, the ring moves on.
      run.batches.back() = value(run.batches.back()->CopyTo(arrow::default_cpu_memory_manager()));
      batch->release();
    }
  } catch (...) {
    p.reader->close();  // the producer sees the reader leave instead of waiting for room forever
    producing.join();
    throw;
  }
  producing.join();
  return run;
}

void streams() {
  const size_t fds_before = open_fds();

  // 1. gold files, dictionaries included (whole, nested), through a 64 KiB ring
  const std::string gold = gold_dir() + "/1.0.0-littleendian/";
  for (const char* name : {"generated_primitive", "generated_dictionary", "generated_nested_dictionary",
                           "generated_nested", "generated_map"}) {
    const std::string test = std::string("stream C++ -> C++: ") + name;
    try {
      auto table = read_stream_file(gold + name + ".stream");
      StreamWriterOptions options;
      options.capacity_bytes = 65536;
      auto p = open_stream_pair(table->schema(), options);
      arrow::TableBatchReader reader(*table);
      auto batches = value(reader.ToRecordBatches());
      auto run = run_stream(p, batches);
      auto got = value(arrow::Table::FromRecordBatches(p.reader->schema(), run.batches));
      report(test, !run.producer_error && got->Equals(*table),
             run.producer_error ? run.producer_error->code() : got->ToString().substr(0, 200));
      report(test + ": batch buffers lie inside the ring mapping (zero copy)", run.zero_copy, run.why);
    } catch (const std::exception& e) {
      report(test, false, e.what());
    }
  }

  // 2. a dictionary that grows (deltas), then is replaced, and a batch larger than a quarter of
  //    the ring (STREAM_SEGMENT + EXTERNAL), with wrap-around padding in between
  try {
    auto schema = arrow::schema({arrow::field("n", arrow::int64()),
                                 arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
    std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
    for (int b = 0; b < 40; b++) {
      const int rows = b == 20 ? 50000 : 200;
      arrow::Int64Builder n;
      arrow::StringDictionary32Builder d;
      // Growth (a prefix of the same words: deltas), then other words from batch 30 (replacement).
      auto word = [&](int k) {
        std::string w(1, b < 30 ? 'w' : 'x');
        w.append(std::to_string(k));
        return w;
      };
      arrow::StringBuilder memo;
      for (int w = 0; w < 3 + b; w++)
        if (!memo.Append(word(w)).ok()) throw std::runtime_error("memo");
      if (!d.InsertMemoValues(*value(memo.Finish())).ok()) throw std::runtime_error("memo");
      for (int i = 0; i < rows; i++) {
        if (!n.Append(i).ok() || !d.Append(word(i % (3 + b))).ok()) throw std::runtime_error("append");
      }
      batches.push_back(arrow::RecordBatch::Make(schema, rows, {value(n.Finish()), value(d.Finish())}));
    }
    StreamWriterOptions options;
    options.capacity_bytes = 65536;
    auto p = open_stream_pair(schema, options);
    auto run = run_stream(p, batches);
    bool equal = run.batches.size() == batches.size();
    for (size_t i = 0; equal && i < batches.size(); i++) equal = run.batches[i]->Equals(*batches[i]);
    report("stream: dictionary deltas and replacement, a batch through STREAM_SEGMENT", !run.producer_error && equal,
           run.producer_error ? run.producer_error->code() : std::to_string(run.batches.size()) + " batches");
  } catch (const std::exception& e) {
    report("stream: dictionary deltas and replacement, a batch through STREAM_SEGMENT", false, e.what());
  }

  auto small = arrow::RecordBatch::Make(arrow::schema({arrow::field("n", arrow::int64())}), 1000,
                                        {value(arrow::MakeArrayFromScalar(arrow::Int64Scalar(7), 1000))});

  // 3. a full ring with fail_when_full: ERR_RING_FULL while the reader holds its batches, room again once released
  try {
    StreamWriterOptions options;
    options.capacity_bytes = 65536;
    options.fail_when_full = true;
    auto p = open_stream_pair(small->schema(), options);
    int written = 0;
    std::string code = "none";
    try {
      for (; written < 1000; written++) p.writer->write(*small);
    } catch (const Error& e) {
      code = e.code();
    }
    report("stream: a full ring fails fast with ERR_RING_FULL", code == "ERR_RING_FULL" && written > 0,
           code + " after " + std::to_string(written) + " batches");
    auto first = p.reader->read();
    first.reset();  // released: its room is free again
    bool room = true;
    try {
      p.writer->write(*small);
    } catch (const Error& e) {
      room = false;
    }
    report("stream: a released batch makes room again", room);
    auto run = run_stream(p, {});
    report("stream: the rest of a full ring is read in order", run.batches.size() == static_cast<size_t>(written),
           std::to_string(run.batches.size()) + " of " + std::to_string(written));
  } catch (const std::exception& e) {
    report("stream: a full ring fails fast with ERR_RING_FULL", false, e.what());
  }

  // 4. the producer goes before END: the reader drains what was published, then ERR_PEER_CLOSED
  try {
    auto p = open_stream_pair(small->schema(), {});
    for (int i = 0; i < 3; i++) p.writer->write(*small);
    p.writer->abort();  // no END; the channel closes
    int read = 0;
    std::string code = "none";
    try {
      while (auto batch = p.reader->read()) read++;
    } catch (const Error& e) {
      code = e.code();
    }
    report("stream: producer gone before END -> every batch, then ERR_PEER_CLOSED", read == 3 && code == "ERR_PEER_CLOSED",
           std::to_string(read) + " batches, " + code);
  } catch (const std::exception& e) {
    report("stream: producer gone before END", false, e.what());
  }

  // 5. hostile ring records: ERR_RING_INVALID (reported to the producer), never a crash
  struct Hostile {
    const char* name;
    std::function<void(uint8_t* data, uint64_t& write_position)> scribble;
  };
  auto header = [](uint8_t* at, uint32_t length, uint32_t kind, uint64_t ipc_length) {
    std::memcpy(at, &length, 4);
    std::memcpy(at + 4, &kind, 4);
    std::memcpy(at + 16, &ipc_length, 8);
  };
  const Hostile cases[] = {
      {"unknown record kind", [&](uint8_t* d, uint64_t& wp) { header(d + wp, 64, 9, 0), wp += 64; }},
      {"length not a multiple of 64", [&](uint8_t* d, uint64_t& wp) { header(d + wp, 100, 1, 8), wp += 128; }},
      {"length past the write position", [&](uint8_t* d, uint64_t& wp) { header(d + wp, 4096, 1, 8), wp += 64; }},
      {"length past the data area", [&](uint8_t* d, uint64_t& wp) { header(d + wp, 1u << 30, 1, 8), wp += 1u << 16; }},
      {"BATCH ipc_length past its record", [&](uint8_t* d, uint64_t& wp) { header(d + wp, 128, 1, 1000), wp += 128; }},
      {"PADDING that does not fill the rest", [&](uint8_t* d, uint64_t& wp) { header(d + wp, 64, 2, 0), wp += 64; }},
      {"garbage IPC in a BATCH record", [&](uint8_t* d, uint64_t& wp) {
         header(d + wp, 256, 1, 192);
         std::memset(d + wp + 64, 0x5a, 192);
         wp += 256;
       }},
      {"write position going back", [&](uint8_t*, uint64_t& wp) { wp -= 64; }},
      {"write position more than the ring ahead", [&](uint8_t*, uint64_t& wp) { wp += 1u << 20; }},
  };
  for (auto& c : cases) {
    const std::string test = std::string("stream: hostile ring, ") + c.name;
    try {
      StreamWriterOptions options;
      options.capacity_bytes = 65536;
      auto p = open_stream_pair(small->schema(), options);
      p.writer->write(*small);
      p.reader->read().reset();
      // The ring's memfd (the producer's fd), mapped writable as a hostile producer would.
      int ring = -1;
      for (auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        auto target = std::filesystem::read_symlink(entry.path(), ec).string();
        if (!ec && target.find("memfd:arrow-shm-ring") != std::string::npos)
          ring = std::stoi(entry.path().filename().string());
      }
      if (ring < 0) throw std::runtime_error("no ring memfd found");
      const size_t size = 4096 + 65536;
      void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, ring, 0);
      if (m == MAP_FAILED) throw std::runtime_error("mmap");
      auto* base = static_cast<uint8_t*>(m);
      uint64_t wp;
      std::memcpy(&wp, base + 64, 8);
      c.scribble(base + 4096, wp);
      std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(base + 64)).store(wp);
      std::string code = "none";
      try {
        while (p.reader->read()) {
        }
      } catch (const Error& e) {
        code = e.code();
      }
      ::munmap(m, size);
      const bool expected = code == "ERR_RING_INVALID" || (std::strcmp(c.name, "garbage IPC in a BATCH record") == 0 &&
                                                            code.rfind("ERR_IPC_", 0) == 0);
      report(test, expected, code);
      if (code == "ERR_RING_INVALID") {
        // The producer hears why the reader left.
        p.producer_side->pump(1000);
        auto failure = p.producer_side->failure();
        report(test + ": the producer gets the ERROR", failure && failure->code() == "ERR_RING_INVALID",
               failure ? failure->code() : "nothing");
      }
      p.writer->abort();
    } catch (const std::exception& e) {
      report(test, false, e.what());
    }
  }

  // 5b. a reply stream on the same connection (ping-pong), spinning readers, and dictionary-free
  //     batches written in place; one of them is over a quarter of the ring (its own segment)
  try {
    auto schema = arrow::schema({arrow::field("n", arrow::int64()), arrow::field("s", arrow::utf8())});
    std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
    for (int b = 0; b < 300; b++) {
      const int rows = b == 150 ? 20000 : 1 + b % 40;
      arrow::Int64Builder n;
      arrow::StringBuilder str;
      for (int i = 0; i < rows; i++)
        if (!n.Append(b * 1000 + i).ok() || !str.Append(std::to_string(i)).ok()) throw std::runtime_error("append");
      batches.push_back(arrow::RecordBatch::Make(schema, rows, {value(n.Finish()), value(str.Finish())}));
    }
    StreamWriterOptions options;
    options.capacity_bytes = 65536;
    options.spin_micros = 50;
    options.prefault = true;
    auto p = open_stream_pair(schema, options);
    std::optional<Error> echo_error;
    size_t echoed = 0;
    std::thread echo([&] {
      try {
        auto back = StreamWriter::open(*p.consumer_side, schema, options);
        while (auto b = p.reader->read()) {
          back->write(*b->batch);
          echoed++;
        }
        back->close(std::chrono::seconds(10));
      } catch (const Error& e) {
        echo_error = e;
      }
    });
    struct Joined {  // also when this side throws: the echo's read then times out
      std::thread& t;
      ~Joined() {
        if (t.joinable()) t.join();
      }
    } joined{echo};
    StreamReaderOptions reader_options;
    reader_options.read_timeout = std::chrono::seconds(10);
    reader_options.spin_micros = 50;
    auto replies = StreamReader::accept(*p.producer_side, std::chrono::seconds(10), reader_options);
    bool equal = true;
    for (size_t i = 0; i < batches.size() && equal; i++) {
      p.writer->write(*batches[i]);
      auto reply = replies->read();
      equal = reply && reply->sequence == i && reply->batch->Equals(*batches[i]);
    }
    p.writer->close(std::chrono::seconds(10));
    const bool ended = equal && !replies->read();
    echo.join();
    report("stream: a reply stream on the same connection echoes every batch, then both end",
           equal && ended && !echo_error && echoed == batches.size(),
           echo_error ? echo_error->code() + ": " + echo_error->what() : std::to_string(echoed) + " echoed");
  } catch (const std::exception& e) {
    report("stream: a reply stream on the same connection echoes every batch, then both end", false, e.what());
  }

  // 5c. a reader that keeps up: records go back to the ring's start (a PADDING record fills the
  //     rest) once past the warm part, 256 KiB here, instead of cycling through the 16 MiB ring
  try {
    auto schema = arrow::schema({arrow::field("v", arrow::binary())});
    arrow::BinaryBuilder b;
    if (!b.Append(std::string(20000, 'w')).ok()) throw std::runtime_error("append");
    auto batch = arrow::RecordBatch::Make(schema, 1, {value(b.Finish())});
    StreamWriterOptions options;
    options.capacity_bytes = 16 << 20;
    auto p = open_stream_pair(schema, options);
    uint64_t furthest = 0, read = 0;
    bool equal = true;
    for (int i = 0; i < 200; i++) {  // 4 MB in all
      p.writer->write(*batch);
      auto got = p.reader->read();
      if (!got) break;
      furthest = std::max<uint64_t>(furthest, static_cast<uint64_t>(got->data->data() - p.reader->data_area()));
      equal = equal && got->sequence == read++ && got->batch->Equals(*batch);
    }
    std::optional<Error> close_error;
    std::thread closing([&] {
      try {
        p.writer->close(std::chrono::seconds(10));
      } catch (const Error& e) {
        close_error = e;
      }
    });
    const bool ended = !p.reader->read();
    closing.join();
    report("stream: a reader that keeps up gets records from the ring's warm start, in order",
           equal && ended && !close_error && read == 200 && furthest < (256 << 10),
           std::to_string(read) + " read, furthest record at " + std::to_string(furthest));
  } catch (const std::exception& e) {
    report("stream: a reader that keeps up gets records from the ring's warm start, in order", false, e.what());
  }

  // 6. nothing leaks: every fd of every stream above is closed
  const size_t fds_after = open_fds();
  report("stream: /proc/self/fd count is flat", fds_after == fds_before,
         std::to_string(fds_before) + " -> " + std::to_string(fds_after));
}
// ---------------------------------------------------------------------------------------------
// The stream codecs (stream/encoder.cpp, stream/decoder.cpp): the template encoder's records read
// back through Arrow's reader, and the decode plan against the generic path (the IPC checker,
// Arrow's reader, validate_batch), on honest records and on mutated ones.

// A record's batch by the generic path, or the error code it refuses it with.
struct Decoded {
  std::shared_ptr<arrow::RecordBatch> batch;
  std::string code;
};
Decoded generic_decode(const std::shared_ptr<arrow::Schema>& schema, const uint8_t* record, int64_t n,
                       Validate validate) {
  try {
    auto schema_bytes = value(arrow::ipc::SerializeSchema(*schema));
    IpcChecker checker;
    checker.check_messages(schema_bytes->data(), static_cast<uint64_t>(schema_bytes->size()));
    checker.check_messages(record, static_cast<uint64_t>(n));
    auto joined = value(arrow::AllocateBuffer(schema_bytes->size() + n));
    std::memcpy(joined->mutable_data(), schema_bytes->data(), static_cast<size_t>(schema_bytes->size()));
    std::memcpy(joined->mutable_data() + schema_bytes->size(), record, static_cast<size_t>(n));
    std::shared_ptr<arrow::Buffer> shared = std::move(joined);
    auto reader = unwrap(arrow::ipc::RecordBatchStreamReader::Open(std::make_shared<arrow::io::BufferReader>(shared)));
    std::shared_ptr<arrow::RecordBatch> batch, more;
    check(reader->ReadNext(&batch));
    check(reader->ReadNext(&more));
    if (!batch || more) return {nullptr, "not one batch"};
    validate_batch(*batch, validate);
    return {batch, "ok"};
  } catch (const Error& e) {
    return {nullptr, e.code()};
  }
}

// Batches of every column kind the codecs take: nulls, empty strings, a zero-row batch.
std::vector<std::shared_ptr<arrow::RecordBatch>> codec_batches(const std::shared_ptr<arrow::Schema>& schema) {
  std::vector<std::shared_ptr<arrow::RecordBatch>> out;
  for (int rows : {0, 1, 7, 65}) {
    arrow::Int64Builder i64;
    arrow::Int8Builder i8;
    arrow::DoubleBuilder f64;
    arrow::BooleanBuilder flag;
    arrow::StringBuilder str;
    arrow::LargeBinaryBuilder big(arrow::large_binary(), arrow::default_memory_pool());
    arrow::FixedSizeBinaryBuilder fixed(arrow::fixed_size_binary(3));
    arrow::TimestampBuilder ts(arrow::timestamp(arrow::TimeUnit::MICRO, "UTC"), arrow::default_memory_pool());
    bool ok = true;
    for (int r = 0; r < rows; r++) {
      const bool null = r % 3 == 1;
      ok = ok && (null ? i64.AppendNull() : i64.Append(r * 1000003LL)).ok() && i8.Append(static_cast<int8_t>(r)).ok() &&
           (r % 5 == 2 ? f64.AppendNull() : f64.Append(r / 3.0)).ok() && (null ? flag.AppendNull() : flag.Append(r % 2 == 1)).ok() &&
           (null ? str.AppendNull() : str.Append(std::string(static_cast<size_t>(r % 4), 'a' + r % 26))).ok() &&
           big.Append(std::string(static_cast<size_t>(r % 9), 'z')).ok() && fixed.Append("abc").ok() &&
           (null ? ts.AppendNull() : ts.Append(r)).ok();
    }
    if (!ok) throw std::runtime_error("append failed");
    out.push_back(arrow::RecordBatch::Make(schema, rows, {value(i64.Finish()), value(i8.Finish()), value(f64.Finish()),
                                                          value(flag.Finish()), value(str.Finish()), value(big.Finish()),
                                                          value(fixed.Finish()), value(ts.Finish())}));
  }
  return out;
}

// The record of `batch` as Arrow's writer writes it (the generic producer path, and other peers).
std::vector<uint8_t> arrow_record(const arrow::RecordBatch& batch) {
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.alignment = 64;
  auto sink = value(arrow::io::BufferOutputStream::Create());
  int32_t metadata_length = 0;
  int64_t body_length = 0;
  check(arrow::ipc::WriteRecordBatch(batch, 0, sink.get(), &metadata_length, &body_length, options));
  auto bytes = value(sink->Finish());
  return std::vector<uint8_t>(bytes->data(), bytes->data() + bytes->size());
}

void stream_codecs() {
  auto schema = arrow::schema({arrow::field("i64", arrow::int64()), arrow::field("i8", arrow::int8(), false),
                               arrow::field("f64", arrow::float64()), arrow::field("flag", arrow::boolean()),
                               arrow::field("str", arrow::utf8()), arrow::field("big", arrow::large_binary()),
                               arrow::field("fixed", arrow::fixed_size_binary(3)),
                               arrow::field("ts", arrow::timestamp(arrow::TimeUnit::MICRO, "UTC"))});
  auto encoder = detail::BatchEncoder::make(*schema);
  auto plan = detail::DecodePlan::make(schema, IpcLimits{});
  report("stream codec: a schema of flat columns gets an encoder and a decode plan", encoder && plan);
  if (!encoder || !plan) return;
  auto dictionary = arrow::schema({arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
  auto nested = arrow::schema({arrow::field("l", arrow::list(arrow::int32()))});
  report("stream codec: dictionaries and nested columns take the generic path",
         !detail::BatchEncoder::make(*dictionary) && !detail::DecodePlan::make(dictionary, {}) &&
             !detail::BatchEncoder::make(*nested) && !detail::DecodePlan::make(nested, {}));

  // Honest records, both writers: the plan reads each, equal to the generic path and the original.
  std::vector<std::vector<uint8_t>> records;
  bool encoded = true, planned = true;
  std::string why;
  for (auto& batch : codec_batches(schema)) {
    const int64_t n = encoder->measure(*batch);
    if (n < 0) {
      encoded = false;
      why = "measure refused " + std::to_string(batch->num_rows()) + " rows";
      continue;
    }
    std::vector<uint8_t> record(static_cast<size_t>(n), 0xee);
    encoder->write(record.data());
    auto generic = generic_decode(schema, record.data(), n, Validate::Bounds);
    if (!generic.batch || !generic.batch->Equals(*batch)) {
      encoded = false;
      why = std::to_string(batch->num_rows()) + " rows: " + generic.code;
    }
    records.push_back(record);
    records.push_back(arrow_record(*batch));
    for (size_t k = records.size() - 2; k < records.size(); k++) {
      auto bytes = value(arrow::AllocateBuffer(static_cast<int64_t>(records[k].size())));
      std::memcpy(bytes->mutable_data(), records[k].data(), records[k].size());
      std::shared_ptr<arrow::Buffer> shared = std::move(bytes);
      auto read = plan->decode(shared, Validate::Bounds);
      planned = planned && read && read->Equals(*batch);
    }
  }
  report("stream codec: the template encoder's records read back equal through Arrow's reader", encoded, why);
  report("stream codec: the decode plan reads the encoder's and Arrow's writer's records, equal", planned);

  // Mutated records: whatever the plan accepts, the generic path accepts too, as the same batch.
  std::mt19937_64 rng(16);
  int accepted = 0, refused_by_both = 0, trials = 0;
  std::string disagreement;
  for (int t = 0; t < 20000 && disagreement.empty(); t++) {
    std::vector<uint8_t> record = records[rng() % records.size()];
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; f++) {
      // Mostly the metadata (the first ~400 bytes), sometimes anywhere.
      const size_t limit = rng() % 4 ? std::min<size_t>(record.size(), 400) : record.size();
      record[rng() % limit] = static_cast<uint8_t>(rng() % 3 == 0 ? rng() : record[rng() % limit] + 1);
    }
    const Validate validate = t % 2 ? Validate::Bounds : Validate::Full;
    auto bytes = value(arrow::AllocateBuffer(static_cast<int64_t>(record.size())));
    std::memcpy(bytes->mutable_data(), record.data(), record.size());
    std::shared_ptr<arrow::Buffer> shared = std::move(bytes);
    std::shared_ptr<arrow::RecordBatch> read;
    try {
      read = plan->decode(shared, validate);
      if (read && !plan->covers(validate)) validate_batch(*read, validate);
    } catch (const Error& e) {
      read = nullptr;
      auto generic = generic_decode(schema, record.data(), static_cast<int64_t>(record.size()), validate);
      if (generic.code != e.code()) disagreement = "plan " + e.code() + ", generic " + generic.code;
      continue;
    }
    trials++;
    auto generic = generic_decode(schema, record.data(), static_cast<int64_t>(record.size()), validate);
    if (read) {
      accepted++;
      if (!generic.batch) disagreement = "trial " + std::to_string(t) + ": plan accepted, generic path " + generic.code;
      else if (!generic.batch->Equals(*read)) disagreement = "trial " + std::to_string(t) + ": different batches";
    } else if (!generic.batch) {
      refused_by_both++;
    }
  }
  report("stream codec: on 20000 mutated records the plan accepts only what the generic path accepts, equal",
         disagreement.empty() && accepted > 1000 && refused_by_both > 1000,
         disagreement.empty() ? std::to_string(accepted) + " accepted, " + std::to_string(refused_by_both) +
                                    " refused by both of " + std::to_string(trials)
                              : disagreement);
}

// ---------------------------------------------------------------------------------------------
// Limits (§14, issue #13). The shared-offset bombs themselves come from test/python/attacks.py
// in test.sh; here each limit is shown configurable on streams Arrow C++ writes.

std::vector<uint8_t> ipc_bytes(const std::shared_ptr<arrow::Schema>& schema, int64_t rows = 0) {
  arrow::ArrayVector columns;
  for (auto& f : schema->fields()) columns.push_back(value(arrow::MakeArrayOfNull(f->type(), rows)));
  auto sink = value(arrow::io::BufferOutputStream::Create());
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.max_recursion_depth = 200;  // deeper than a reader takes: the limit under test must refuse it
  auto writer = value(arrow::ipc::MakeStreamWriter(sink, schema, options));
  if (!writer->WriteRecordBatch(*arrow::RecordBatch::Make(schema, rows, columns)).ok() || !writer->Close().ok())
    throw std::runtime_error("cannot write the IPC stream");
  auto buffer = value(sink->Finish());
  return std::vector<uint8_t>(buffer->data(), buffer->data() + buffer->size());
}

// The error code validate_stream gives (or "ok").
std::string validation(const std::vector<uint8_t>& bytes, const IpcLimits& limits = {}) {
  try {
    validate_stream(bytes.data(), bytes.size(), limits);
    return "ok";
  } catch (const Error& e) {
    return e.code();
  }
}

// A raw frame from `sock` (the hand-written side of a socketpair), or an empty frame on timeout.
std::optional<Frame> raw_frame(int sock, int timeout_ms) {
  try {
    wait_readable(sock, Clock::now() + std::chrono::milliseconds(timeout_ms), "a frame");
  } catch (const Error&) {
    return std::nullopt;
  }
  std::vector<uint8_t> buf(kMaxFrameBytes);
  std::vector<Fd> fds;
  int flags = 0;
  const size_t n = recv_with_fds(sock, buf.data(), buf.size(), fds, flags);
  if (n == 0) return std::nullopt;
  return decode_frame(buf.data(), n);
}

void send_raw(int sock, const Frame& f) {
  auto bytes = encode_frame(f);
  send_with_fds(sock, bytes.data(), bytes.size(), {});
}

Frame hello(const std::string& pid) {
  Frame f;
  f.kind = Kind::Hello;
  f.metadata = {{"min_version", "1"}, {"max_version", "1"}, {"capabilities", "stream"}, {"pid", pid}};
  return f;
}

void limits() {
  using arrow::field;
  // 1. each decoding limit of §14.1 is configurable and refuses with ERR_IPC_LIMIT
  auto three = arrow::schema({field("a", arrow::int32()), field("b", arrow::utf8()), field("c", arrow::float64())});
  IpcLimits two_fields;
  two_fields.max_fields = 2;
  report("limits: 3 fields pass by default", validation(ipc_bytes(three, 3)) == "ok", validation(ipc_bytes(three, 3)));
  report("limits: 3 fields over max_fields 2: ERR_IPC_LIMIT", validation(ipc_bytes(three), two_fields) == "ERR_IPC_LIMIT",
         validation(ipc_bytes(three), two_fields));
  auto tagged = three->WithMetadata(arrow::key_value_metadata({"k1", "k2", "k3"}, {"v1", "v2", "v3"}));
  IpcLimits two_entries;
  two_entries.max_metadata_entries = 2;
  report("limits: 3 schema metadata entries over max_metadata_entries 2",
         validation(ipc_bytes(tagged), two_entries) == "ERR_IPC_LIMIT", validation(ipc_bytes(tagged), two_entries));
  auto named = arrow::schema({field(std::string(4096, 'n'), arrow::int8())});
  IpcLimits small_bytes;
  small_bytes.max_metadata_bytes = 1024;
  report("limits: a 4 KiB name over max_metadata_bytes 1 KiB", validation(ipc_bytes(named), small_bytes) == "ERR_IPC_LIMIT",
         validation(ipc_bytes(named), small_bytes));
  std::shared_ptr<arrow::DataType> deep = arrow::int32();
  for (int i = 0; i < 8; i++) deep = arrow::list(deep);
  auto nested = arrow::schema({field("deep", deep)});
  IpcLimits shallow;
  shallow.max_nesting_depth = 8;  // Message 0, Schema 1, Field 2, one more a level: 8 lists reach 10
  report("limits: 8 nested lists pass by default", validation(ipc_bytes(nested, 2)) == "ok", validation(ipc_bytes(nested, 2)));
  report("limits: 8 nested lists over max_nesting_depth 8", validation(ipc_bytes(nested), shallow) == "ERR_IPC_LIMIT",
         validation(ipc_bytes(nested), shallow));
  std::shared_ptr<arrow::DataType> too_deep = arrow::int32();
  for (int i = 0; i < 70; i++) too_deep = arrow::list(too_deep);
  auto bytes = ipc_bytes(arrow::schema({field("deep", too_deep)}));
  report("limits: 70 nested lists over the default max_nesting_depth 64", validation(bytes) == "ERR_IPC_LIMIT",
         validation(bytes));

  // 2. a received table past the ChannelOptions' limit gets ERROR ERR_IPC_LIMIT; the connection goes on
  const Timeout timeout = std::chrono::seconds(10);
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_errno("socketpair", errno);
  ChannelOptions options;
  options.ipc_limits = two_fields;
  options.max_inbox_messages = 2;
  std::unique_ptr<Channel> server;
  std::thread accepting([&] { server = Channel::accept(Fd(pair[1]), timeout, options); });
  auto client = Channel::handshake(Fd(pair[0]), timeout);
  accepting.join();
  auto one = arrow::Table::Make(arrow::schema({field("x", arrow::int64())}),
                                {array<arrow::Int64Builder, int64_t>({1, 2})});
  std::string code = "none";
  std::thread refusing([&] {
    try {
      server->receive_message(timeout);
    } catch (const Error& e) {
      code = e.code();
    }
  });
  std::string sender = "ACKed";
  try {
    client->send(*sample_table(), {}, timeout);
  } catch (const Error& e) {
    sender = e.code();
  }
  refusing.join();
  report("limits: the sender gets ERROR ERR_IPC_LIMIT", sender == "ERR_IPC_LIMIT", sender);
  report("limits: the receiver's receive_message throws ERR_IPC_LIMIT", code == "ERR_IPC_LIMIT", code);

  // 3. max_inbox_messages 2: a third table is not read (its send waits for the ACK) until the
  // application takes one; then it arrives
  std::thread pumping([&] {
    for (int i = 0; i < 20; i++) server->pump(50);
  });
  client->send(*one, {}, timeout);
  client->send(*one, {}, timeout);
  std::string third = "ACKed";
  try {
    client->send(*one, {}, std::chrono::milliseconds(300));
  } catch (const Error& e) {
    third = e.code();
  }
  pumping.join();
  report("limits: past max_inbox_messages the sender waits (ERR_TIMEOUT)", third == "ERR_TIMEOUT", third);
  report("limits: the inbox holds max_inbox_messages", server->inbox_full());
  int taken = 0;
  while (taken < 3 && server->receive_message(timeout)) taken++;
  report("limits: taken from the inbox, the waiting table arrives", taken == 3, std::to_string(taken));
  client->close();
  server.reset();

  // 4. max_stream_offers: the 17th STREAM_OPEN not yet accepted is refused with ERR_RESOURCE_LIMIT
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_errno("socketpair", errno);
  Fd raw(pair[0]);
  send_raw(raw.get(), hello("1"));
  server = Channel::accept(Fd(pair[1]), timeout);
  (void)raw_frame(raw.get(), 1000);  // WELCOME
  for (uint64_t i = 0; i < 17; i++) {
    Frame open;
    open.kind = Kind::StreamOpen;
    open.message_id = 10 + i;
    send_raw(raw.get(), open);
  }
  server->pump(200);
  auto refusal = raw_frame(raw.get(), 1000);
  report("limits: the 17th stream offer gets ERROR ERR_RESOURCE_LIMIT",
         refusal && refusal->kind == Kind::Error && refusal->correlation_id == 26 &&
             refusal->get("code") == std::string("ERR_RESOURCE_LIMIT"),
         refusal ? refusal->get("code").value_or("?") + " for " + std::to_string(refusal->correlation_id) : "nothing");
  server.reset();

  // 5. §4 strict decimals: a HELLO whose pid is not one is a fatal ERR_PROTOCOL
  for (const char* pid : {"0x1", "-1", "1e3", " 7", "", "0123", "1234567890"}) {
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_errno("socketpair", errno);
    Fd peer(pair[0]);
    send_raw(peer.get(), hello(pid));
    std::string got = "accepted";
    try {
      Channel::accept(Fd(pair[1]), timeout);
    } catch (const Error& e) {
      got = e.code();
    }
    report(std::string("limits: HELLO pid '") + pid + "' is ERR_PROTOCOL", got == "ERR_PROTOCOL", got);
  }
}

// ---------------------------------------------------------------------------------------------
// Inline tables (§5.3) and the STORE kind (§15.1) between two C++ channels.

struct Pair {
  std::unique_ptr<Channel> client, server;
};
Pair channel_pair(ChannelOptions server_options = {}, ChannelOptions client_options = {}) {
  const Timeout timeout = std::chrono::seconds(10);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) throw_errno("socketpair", errno);
  Pair p;
  std::thread accepting([&] { p.server = Channel::accept(Fd(fds[1]), timeout, server_options); });
  p.client = Channel::handshake(Fd(fds[0]), timeout, client_options);
  accepting.join();
  return p;
}

void inline_tables() {
  const Timeout timeout = std::chrono::seconds(10);
  // 1. a small table goes inline; the receiver's copy is 8-aligned and the columns point into it
  auto p = channel_pair();
  report("inline: both sides list the capability", p.client->peer_has_capability("inline") &&
                                                        p.server->peer_has_capability("inline"));
  auto sent = sample_table();
  std::thread sending([&] { p.client->send(*sent, {{"name", "small"}}, timeout); });
  auto m = p.server->receive_message(timeout);
  sending.join();
  if (!m) return report("inline: receive", false, "nothing");
  auto table = m->table();
  const uint8_t* lo = m->ipc->data();
  std::string why;
  bool inside_copy = true;
  for (auto& column : table->columns())
    for (auto& chunk : column->chunks()) inside_copy = inside(*chunk->data(), lo, lo + m->ipc->size(), why) && inside_copy;
  report("inline: a small table arrives INLINE, equal, with its metadata",
         m->is_inline() && table->Equals(*sent) && m->metadata == KV{{"name", "small"}},
         std::to_string(m->flags) + " " + table->ToString().substr(0, 200));
  report("inline: the stream is 8-aligned and every column lies inside it (zero copy from the copy)",
         reinterpret_cast<uintptr_t>(lo) % 8 == 0 && inside_copy, why);

  // 2. requests and responses inline, both ways
  std::thread serving([&] { p.server->serve([](const ReceivedTable& r) { return engine_answer(*r.table()); }, 1); });
  auto response = p.client->request(*symbol_table(), timeout);
  serving.join();
  report("inline: a request and its response", response && response->num_rows() == 4);
  p.client->close();

  // 3. over the receiver's max_message_bytes (100): a C++ sender refuses itself (told in WELCOME);
  // an INLINE frame that comes anyway gets ERROR ERR_TOO_LARGE, and the connection goes on
  ChannelOptions tiny;
  tiny.max_message_bytes = 100;
  auto q = channel_pair(tiny);
  std::string sender = "ACKed";
  try {
    q.client->send(*sent, {}, timeout);
  } catch (const Error& e) {
    sender = e.code();
  }
  report("inline: a sender keeps to the peer's max_message_bytes", sender == "ERR_TOO_LARGE", sender);
  q.client->close();
  int raw_pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, raw_pair) != 0) throw_errno("socketpair", errno);
  Fd hostile(raw_pair[0]);
  send_raw(hostile.get(), hello("1"));
  auto small = Channel::accept(Fd(raw_pair[1]), timeout, tiny);
  (void)raw_frame(hostile.get(), 1000);  // WELCOME
  auto stream = stream_from_table(*sent, 65000);
  Frame frame;
  frame.kind = Kind::Table;
  frame.flags = kInline;
  frame.message_id = 2;
  auto bytes = encode_frame(frame, stream.bytes.data(), stream.bytes.size());
  send_with_fds(hostile.get(), bytes.data(), bytes.size(), {});
  std::string receiver = "none";
  try {
    small->receive_message(timeout);
  } catch (const Error& e) {
    receiver = e.code();
  }
  auto refusal = raw_frame(hostile.get(), 1000);
  report("inline: past max_message_bytes: ERROR ERR_TOO_LARGE for that table, the connection goes on",
         receiver == "ERR_TOO_LARGE" && refusal && refusal->correlation_id == 2 &&
             refusal->get("code") == std::string("ERR_TOO_LARGE") && !small->peer_gone(),
         receiver);

  // 4. max_inline_bytes 0: never inline
  ChannelOptions never;
  never.max_inline_bytes = 0;
  auto r = channel_pair({}, never);
  std::thread sending2([&] { r.client->send(*sent, {}, timeout); });
  auto segment = r.server->receive_message(timeout);
  sending2.join();
  report("inline: max_inline_bytes 0 sends a segment", segment && !segment->is_inline() &&
                                                           std::dynamic_pointer_cast<MappedBuffer>(segment->ipc));
  r.client->close();

  // 5. a STORE frame to a side that is no store: fatal ERR_PROTOCOL (as Node's channel)
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_errno("socketpair", errno);
  Fd raw(pair[0]);
  send_raw(raw.get(), hello("1"));
  auto server = Channel::accept(Fd(pair[1]), timeout);
  (void)raw_frame(raw.get(), 1000);  // WELCOME
  Frame store;
  store.kind = Kind::Store;
  store.flags = kRequest;
  store.message_id = 2;
  store.metadata = {{"op", "list"}};
  send_raw(raw.get(), store);
  server->pump(1000);
  auto answer = raw_frame(raw.get(), 1000);
  report("store: a STORE frame to a non-store is a fatal ERR_PROTOCOL",
         server->peer_gone() && server->failure() && server->failure()->code() == "ERR_PROTOCOL" && answer &&
             answer->kind == Kind::Error && answer->correlation_id == 0,
         server->failure() ? server->failure()->code() : "no failure");
  report("store: ERR_NOT_FOUND / ERR_EXISTS are codes of this peer",
         std::string(kErrNotFound) == "ERR_NOT_FOUND" && std::string(kErrExists) == "ERR_EXISTS");
}

// ---------------------------------------------------------------------------------------------
// The validation policy (Validate): bounds, full, framing on hostile streams Arrow C++ writes.

std::vector<uint8_t> stream_of(const std::shared_ptr<arrow::Array>& column) {
  auto schema = arrow::schema({arrow::field("c", column->type())});
  auto sink = value(arrow::io::BufferOutputStream::Create());
  auto writer = value(arrow::ipc::MakeStreamWriter(sink, schema));
  if (!writer->WriteRecordBatch(*arrow::RecordBatch::Make(schema, column->length(), {column})).ok() ||
      !writer->Close().ok())
    throw std::runtime_error("cannot write the IPC stream");
  auto buffer = value(sink->Finish());
  return std::vector<uint8_t>(buffer->data(), buffer->data() + buffer->size());
}

// `bytes` with the first occurrence of the int32 run `from` replaced by `to` (a buffer of the body).
std::vector<uint8_t> patched(std::vector<uint8_t> bytes, std::vector<int32_t> from, std::vector<int32_t> to) {
  const size_t n = from.size() * 4;
  for (size_t at = 0; at + n <= bytes.size(); at += 4)
    if (std::memcmp(bytes.data() + at, from.data(), n) == 0) {
      std::memcpy(bytes.data() + at, to.data(), n);
      return bytes;
    }
  throw std::runtime_error("pattern not found");
}

std::string checked(const std::vector<uint8_t>& bytes, Validate v) {
  try {
    validate_stream(bytes.data(), bytes.size(), {}, v);
    return "ok";
  } catch (const Error& e) {
    return e.code();
  }
}

void validation_policy() {
  auto binary = array<arrow::BinaryBuilder, std::string>({"ok", "\xff\xfe", "abc", "defgh"});
  auto bad_utf8 = stream_of(value(binary->View(arrow::utf8())));
  auto nested_bad_utf8 = stream_of(value(arrow::ListArray::FromArrays(
      *array<arrow::Int32Builder, int32_t>({0, 1, 4}), *value(binary->View(arrow::utf8())))));
  auto text = array<arrow::StringBuilder, std::string>({"abc", "defgh"});
  auto past_data = patched(stream_of(text), {0, 3, 8}, {0, 3, 4000});
  auto nested_past_data = patched(stream_of(value(arrow::ListArray::FromArrays(
                                      *array<arrow::Int32Builder, int32_t>({0, 2}), *text))),
                                  {0, 3, 8}, {0, 3, 4000});
  auto dictionary = value(arrow::DictionaryArray::FromArrays(
      arrow::dictionary(arrow::int32(), arrow::utf8()), array<arrow::Int32Builder, int32_t>({2, 1, 2, 0}),
      array<arrow::StringBuilder, std::string>({"x", "y", "z"})));
  auto bad_index = patched(stream_of(dictionary), {2, 1, 2, 0}, {2, 1, 77, 0});
  struct Case {
    const char* name;
    const std::vector<uint8_t>& bytes;
    const char *bounds, *full, *framing;
  };
  const Case cases[] = {
      {"invalid UTF-8", bad_utf8, "ok", "ERR_IPC_INVALID", "ok"},
      {"invalid UTF-8 in a list", nested_bad_utf8, "ok", "ERR_IPC_INVALID", "ok"},
      {"utf8 offsets past the data buffer", past_data, "ERR_IPC_INVALID", "ERR_IPC_INVALID", nullptr},
      {"utf8 offsets past the data buffer in a list", nested_past_data, "ERR_IPC_INVALID", "ERR_IPC_INVALID", nullptr},
      {"a dictionary index past the dictionary", bad_index, "ERR_IPC_INVALID", "ERR_IPC_INVALID", nullptr},
      {"a valid dictionary", stream_of(dictionary), "ok", "ok", "ok"},
  };
  for (auto& c : cases) {
    const std::string got = checked(c.bytes, Validate::Bounds) + " / " + checked(c.bytes, Validate::Full) + " / " +
                            (c.framing ? checked(c.bytes, Validate::Framing) : "-");
    const std::string want =
        std::string(c.bounds) + " / " + c.full + " / " + (c.framing ? c.framing : "-");
    report(std::string("validate bounds / full / framing: ") + c.name, got == want, got);
  }
  bool names = true;
  for (const char* n : {"bounds", "full", "framing"}) names = names && std::string(validate_name(parse_validate(n))) == n;
  std::string other = "accepted";
  try {
    parse_validate("strict");
  } catch (const Error& e) {
    other = e.code();
  }
  report("validate: the three names, anything else ERR_INVALID_ARGUMENT", names && other == "ERR_INVALID_ARGUMENT", other);

  // Every gold stream gets the same verdict under bounds and full (they hold valid UTF-8).
  int same = 0, differ = 0;
  std::string first_difference;
  for (auto& entry : std::filesystem::recursive_directory_iterator(gold_dir())) {
    if (entry.path().extension() != ".stream") continue;
    std::ifstream f(entry.path(), std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const std::string b = checked(bytes, Validate::Bounds), full = checked(bytes, Validate::Full);
    if (b == full && b == "ok") same++;
    else if (differ++ == 0) first_difference = entry.path().filename().string() + ": " + b + " / " + full;
  }
  report("validate: every gold stream passes bounds and full", same > 20 && differ == 0,
         std::to_string(same) + " ok, " + first_difference);
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
  try {
    streams();
  } catch (const Error& e) {
    report("streams", false, e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    report("streams", false, e.what());
  }
  using Part = std::pair<const char*, void (*)()>;
  for (auto [name, part] : {Part{"stream codec", stream_codecs}, Part{"inline", inline_tables},
                            Part{"validate", validation_policy}}) {
    try {
      part();
    } catch (const Error& e) {
      report(name, false, e.code() + ": " + e.what());
    } catch (const std::exception& e) {
      report(name, false, e.what());
    }
  }
  try {
    limits();
  } catch (const Error& e) {
    report("limits", false, e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    report("limits", false, e.what());
  }
  return failures ? 1 : 0;
}
