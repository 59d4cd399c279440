// arrow-shm-cpp-store-test STORE GOLD_DIR: the table store client (PROTOCOL §15) against a real
// Node store at STORE (`arrow-shm store`, started by test.sh; it put every gold stream as
// node/<path> before), and against a fake store in this process that answers hostile frames.
// Puts every gold stream as cpp/<path> for test.sh to get from Node. Prints one "PASS: name" or
// "FAIL: name: why" line per check (peers/cpp/test.sh counts them).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/writer.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "report.hpp"
#include "arrow_shm/store.hpp"

using namespace arrow_shm;
using namespace std::chrono_literals;

namespace {

using arrow_shm_test::failures;
using arrow_shm_test::report;

// Runs `body`; a thrown exception fails the check `name`.
template <typename F>
void check(const std::string& name, F body) {
  try {
    body();
  } catch (const Error& e) {
    report(name, false, e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    report(name, false, e.what());
  }
}

// `call` throws an Error whose code starts with `code` (and whose message has `text`).
template <typename F>
void expect_error(const std::string& name, const std::string& code, F call, const std::string& text = "") {
  try {
    call();
    report(name, false, "no error (expected " + code + ")");
  } catch (const Error& e) {
    const bool ok = e.code().rfind(code, 0) == 0 && std::string(e.what()).find(text) != std::string::npos;
    report(name, ok, e.code() + ": " + e.what());
  } catch (const std::exception& e) {
    report(name, false, std::string("not an arrow_shm::Error: ") + e.what());
  }
}

std::vector<uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

bool same_bytes(const ReceivedTable& m, const std::vector<uint8_t>& want) {
  return static_cast<size_t>(m.ipc->size()) == want.size() && std::memcmp(m.ipc->data(), want.data(), want.size()) == 0;
}

std::optional<std::string> meta(const KV& kv, const std::string& key) {
  for (auto& [k, v] : kv)
    if (k == key) return v;
  return std::nullopt;
}

template <typename T>
T value(arrow::Result<T> r) {
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return std::move(r).ValueOrDie();
}

std::shared_ptr<arrow::Table> symbols(int rows) {
  arrow::StringBuilder sym;
  arrow::DoubleBuilder px;
  for (int i = 0; i < rows; i++) {
    if (!sym.Append(i % 3 == 0 ? "AAPL" : i % 3 == 1 ? "GOOG" : "MSFT").ok() || !px.Append(i * 1.5).ok())
      throw std::runtime_error("append");
  }
  auto schema = arrow::schema({arrow::field("sym", arrow::utf8()), arrow::field("px", arrow::float64())});
  return arrow::Table::Make(schema, {value(sym.Finish()), value(px.Finish())});
}

std::vector<uint8_t> ipc_bytes(const arrow::Table& table) {
  auto sink = value(arrow::io::BufferOutputStream::Create());
  auto writer = value(arrow::ipc::MakeStreamWriter(sink, table.schema()));
  if (!writer->WriteTable(table).ok() || !writer->Close().ok()) throw std::runtime_error("write");
  auto buffer = value(sink->Finish());
  return {buffer->data(), buffer->data() + buffer->size()};
}

// What is open in this process: fd -> target, and memfd mappings (compared by what they are).
std::set<std::string> open_things() {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec) out.insert("fd " + e.path().filename().string() + " -> " + target.string());
  }
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.find("memfd:") != std::string::npos) out.insert("map " + line);
  return out;
}

void expect_nothing_left(const std::string& name, const std::set<std::string>& before) {
  std::string left;
  for (int i = 0; i < 100; i++) {  // a fake store's thread may still be closing its side
    left.clear();
    const auto now = open_things();
    for (auto& t : now)
      if (!before.count(t) && t.find("/proc/self/fd") == std::string::npos) left += t + "; ";
    if (left.empty()) break;
    std::this_thread::sleep_for(20ms);
  }
  report(name, left.empty(), "left open: " + left);
}

// ---------------------------------------------------------------------------------------------
// Against the real (Node) store

void real_store(const std::string& address, const std::filesystem::path& gold) {
  const auto before = open_things();
  {
    auto client = StoreClient::open(address, 10000ms);
    // 1. every gold stream: Node's put read back byte for byte; ours put for Node to read
    std::vector<std::filesystem::path> files;
    for (auto& e : std::filesystem::recursive_directory_iterator(gold))
      if (e.path().extension() == ".stream") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (auto& f : files) {
      const std::string rel = std::filesystem::relative(f, gold).string();
      const auto bytes = read_file(f);
      check("gold node -> cpp " + rel, [&] {
        ReceivedTable m = client->get("node/" + rel);
        report("gold node -> cpp " + rel, same_bytes(m, bytes) && meta(m.metadata, kStoreNameKey) == "node/" + rel,
               "differs");
      });
      check("gold cpp put " + rel, [&] {
        PutResult put = client->put("cpp/" + rel, bytes, {{{"from", "cpp"}}, true});
        report("gold cpp put " + rel, put.version > 0 && put.bytes >= bytes.size(), "put answered version 0");
      });
    }

    // 2. a table with metadata; versions, replace, typed errors
    auto table = symbols(300);
    check("put table, get equal with metadata", [&] {
      PutResult put = client->put("t/sym", *table, {{{"k", "v \"q\" \xc3\xa9"}}, false});
      ReceivedTable m = client->get("t/sym");
      report("put table, get equal with metadata",
             put.rows == 300 && m.table()->Equals(*table) && meta(m.metadata, "k") == "v \"q\" \xc3\xa9" &&
                 meta(m.metadata, kStoreVersionKey) == std::to_string(put.version),
             "rows " + std::to_string(put.rows));
      auto entries = client->list("t/");
      report("list: the entry and its JSON metadata",
             entries.size() == 1 && entries[0].name == "t/sym" && entries[0].rows == 300 && entries[0].version == put.version &&
                 entries[0].metadata == KV{{"k", "v \"q\" \xc3\xa9"}},
             std::to_string(entries.size()) + " entries");
    });
    expect_error("put of an existing name: ERR_EXISTS", kErrExists, [&] { client->put("t/sym", *table); });
    check("replace makes a new version; readers keep the old one", [&] {
      ReceivedTable old = client->get("t/sym");
      PutResult put = client->put("t/sym", *symbols(5), {{}, true});
      ReceivedTable now = client->get("t/sym");
      report("replace makes a new version; readers keep the old one",
             now.table()->num_rows() == 5 && old.table()->Equals(*table) &&
                 meta(now.metadata, kStoreVersionKey) == std::to_string(put.version),
             "");
    });
    expect_error("get of a missing name: ERR_NOT_FOUND", kErrNotFound, [&] { client->get("t/missing"); });
    expect_error("remove of a missing name: ERR_NOT_FOUND", kErrNotFound, [&] { client->remove("t/missing"); });
    expect_error("a name with a space: ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT", [&] { client->get("a b"); });
    expect_error("an empty name: ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT", [&] { client->put("", *table); });
    expect_error("a 257-byte name: ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT", [&] { client->get(std::string(257, 'a')); });
    expect_error("a reserved metadata key: ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT",
                 [&] { client->put("t/r", *table, {{{"arrow-shm.x", "1"}}, false}); });
    expect_error("a negative wait: ERR_INVALID_ARGUMENT", "ERR_INVALID_ARGUMENT", [&] { client->get("t/sym", -1ms); });

    // 3. a get that waits for a later put (from another connection), and one that times out
    check("get waits for a later put", [&] {
      std::thread putter([&] {
        std::this_thread::sleep_for(300ms);
        auto other = StoreClient::open(address, 5000ms);
        other->put("late/one", *table);
      });
      const auto t0 = Clock::now();
      std::optional<ReceivedTable> m;
      try {
        m = client->get("late/one", 10000ms);
      } catch (...) {
        putter.join();
        throw;
      }
      putter.join();
      const auto waited = Clock::now() - t0;
      report("get waits for a later put", m->table()->Equals(*table) && waited >= 250ms,
             "waited " + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()) + " ms");
    });
    expect_error("a get's wait expires: ERR_TIMEOUT", "ERR_TIMEOUT", [&] { client->get("late/never", 200ms); });

    // 4. holds: a get holds its version until the last copy goes or close(); the bytes stay readable
    check("holds are released", [&] {
      client->put("h/a", *table);
      auto holds = [&] { return client->list("h/").at(0).holds; };
      ReceivedTable m = client->get("h/a");
      ReceivedTable copy = m;
      const uint32_t held = holds();
      m.close();
      const uint32_t after_one = holds();
      copy = ReceivedTable();
      const uint32_t after_all = holds();
      report("holds are released (list shows holds 0)", held == 1 && after_one == 1 && after_all == 0,
             std::to_string(held) + " " + std::to_string(after_one) + " " + std::to_string(after_all));
      report("a closed get's table stays readable", m.table()->Equals(*table), "");
    });

    // 5. watch: puts and deletes under its prefix, in order; nothing else
    check("watch sees put and delete", [&] {
      auto watch = client->watch("w/");
      PutResult put = client->put("w/a", *table);
      client->put("x/not-watched", *table, {{}, true});
      const uint64_t removed = client->remove("w/a");
      auto e1 = watch->next(2000ms), e2 = watch->next(2000ms);
      report("watch sees put and delete",
             e1 && e1->event == "put" && e1->name == "w/a" && e1->version == put.version && e1->bytes == put.bytes && e2 &&
                 e2->event == "delete" && e2->name == "w/a" && e2->version == removed,
             e1 ? e1->event + " " + e1->name : "no event");
      expect_error("watch: no more events (ERR_TIMEOUT)", "ERR_TIMEOUT", [&] { watch->next(100ms); });
      watch->close();
      report("a closed watch ends", !watch->next(100ms), "an event after close");
    });
    check("stats", [&] {
      StoreStats s = client->stats();
      report("stats", s.entries >= files.size() && s.evict == "lru" && s.memory > 0 && s.bytes > 0, s.evict);
    });
    check("a table outlives its client", [&] {
      ReceivedTable m = client->get("t/sym");
      client->close();
      report("a table outlives its client", m.table()->num_rows() == 5 && !client->is_open(), "");
      expect_error("a closed client: ERR_CLOSED", "ERR_CLOSED", [&] { client->stats(); });
    });
  }
  expect_nothing_left("real store: no fds or mappings left", before);
}

// ---------------------------------------------------------------------------------------------
// A fake store: `connections` connections one after the other, each a handshake listing `capabilities`, then answer(request) for
// each request. Frames it sends get consecutive ids (WELCOME is 1); what the client sent is kept.

struct Out {
  Frame frame;
  std::vector<Fd> fds;
  std::vector<uint8_t> raw;  // sent as is instead of `frame` when not empty (a bad frame)
};
using Answer = std::function<std::vector<Out>(const Frame&)>;

class FakeStore {
 public:
  explicit FakeStore(Answer answer, std::string capabilities = "store", int connections = 1)
      : connections_(connections),
        address_("@ashm-cpp-fake-" + std::to_string(::getpid()) + "-" + std::to_string(++count_)),
        listener_(listen_socket(address_, SOCK_SEQPACKET)),
        answer_(std::move(answer)),
        capabilities_(std::move(capabilities)),
        thread_([this] { serve(); }) {}
  ~FakeStore() { thread_.join(); }
  const std::string& address() const { return address_; }
  // Waits (2 s at most) until the client sent a frame matching `pred`.
  bool received(const std::function<bool(const Frame&)>& pred) {
    for (int i = 0; i < 100; i++) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& f : frames_)
          if (pred(f)) return true;
      }
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

 private:
  void send(int sock, Out& out) {
    out.frame.message_id = next_id_++;
    if (out.frame.fd_count == 0) out.frame.fd_count = static_cast<uint32_t>(out.fds.size());
    auto bytes = out.raw.empty() ? encode_frame(out.frame) : out.raw;
    std::vector<int> fds;
    for (auto& fd : out.fds) fds.push_back(fd.get());
    send_with_fds(sock, bytes.data(), bytes.size(), fds);
  }
  void serve() {
    for (int i = 0; i < connections_; i++) serve_one();
  }
  void serve_one() {
    next_id_ = 1;
    try {
      Fd sock = accept_socket(listener_.get(), Clock::now() + 10s);
      std::vector<uint8_t> buf(kMaxFrameBytes);
      for (;;) {
        std::vector<Fd> fds;  // closed at once
        int flags = 0;
        wait_readable(sock.get(), Clock::now() + 10s, "the client");
        const size_t n = recv_with_fds(sock.get(), buf.data(), buf.size(), fds, flags);
        if (n == 0) return;
        Frame f = decode_frame(buf.data(), n);
        {
          std::lock_guard<std::mutex> lock(mutex_);
          frames_.push_back(f);
        }
        std::vector<Out> outs;
        if (f.kind == Kind::Hello) {
          Out w;
          w.frame.kind = Kind::Welcome;
          w.frame.correlation_id = f.message_id;
          w.frame.metadata = {{"version", "1"}, {"capabilities", capabilities_}, {"implementation", "fake"},
                              {"pid", std::to_string(::getpid())}, {"max_message_bytes", "1073741824"}};
          outs.push_back(std::move(w));
        } else if (f.flags & kRequest) {
          outs = answer_(f);
        }
        for (auto& out : outs) send(sock.get(), out);
      }
    } catch (const Error&) {
      // the client went away: this connection is over
    }
  }

  static inline int count_ = 0;
  int connections_;
  std::string address_;
  Fd listener_;
  Answer answer_;
  std::string capabilities_;
  uint64_t next_id_ = 1;
  std::mutex mutex_;
  std::vector<Frame> frames_;
  std::thread thread_;
};

const auto kTable = symbols(300);
const auto kTableBytes = ipc_bytes(*kTable);

// A memfd holding `bytes`: sealed fully (seals -1), with `seals`, or none (0).
Fd segment(const std::vector<uint8_t>& bytes, int seals = -1) {
  Fd fd = make_segment(bytes.size(), 0, seals == -1, [&](uint8_t* p, uint64_t n) { std::memcpy(p, bytes.data(), n); });
  if (seals > 0 && ::fcntl(fd.get(), F_ADD_SEALS, seals) != 0) throw std::runtime_error("F_ADD_SEALS");
  return fd;
}

Out table_answer(const Frame& q, Fd fd, uint64_t length, uint8_t flags = kResponse | kLeased, int extra_fds = 0) {
  Out o;
  o.frame.kind = Kind::Table;
  o.frame.flags = flags;
  o.frame.correlation_id = q.message_id;
  o.frame.ipc_length = length;
  o.frame.metadata = {{kStoreNameKey, "x"}, {kStoreVersionKey, "1"}};
  for (int i = 0; i < extra_fds; i++) o.fds.emplace_back(::dup(fd.get()));
  o.fds.insert(o.fds.begin(), std::move(fd));
  return o;
}

Out stats_answer(const Frame& q, KV extra = {}) {
  Out o;
  o.frame.kind = Kind::Store;
  o.frame.flags = kResponse;
  o.frame.correlation_id = q.message_id;
  KV kv{{"entries", "0"}, {"bytes", "0"}, {"held_bytes", "0"}, {"memory", "1"}, {"evict", "lru"}, {"evictions", "0"}};
  for (auto& [k, v] : extra) {
    auto it = std::find_if(kv.begin(), kv.end(), [&](auto& p) { return p.first == k; });
    if (it != kv.end()) it->second = v;
    else kv.emplace_back(k, v);
  }
  o.frame.metadata = kv;
  return o;
}

std::string op(const Frame& q) { return q.get("op").value_or(""); }

// The listing of §15.3 with `rows` rows n0, n1, ... (metadata `json` in each).
std::shared_ptr<arrow::Table> listing(int rows, const std::string& json = "{}") {
  arrow::StringBuilder names, metadata;
  arrow::UInt64Builder versions, bytes, ipc_lengths, row_counts;
  arrow::Int64Builder created;
  arrow::UInt32Builder holds;
  for (int i = 0; i < rows; i++) {
    std::string name = "n";  // (not "n" + ...: GCC 12's -Wrestrict false positive)
    name += std::to_string(i);
    bool ok = names.Append(name).ok() && versions.Append(i + 1).ok() && bytes.Append(8).ok() &&
              ipc_lengths.Append(8).ok() && row_counts.Append(1).ok() && created.Append(0).ok() && holds.Append(0).ok() &&
              metadata.Append(json).ok();
    if (!ok) throw std::runtime_error("append");
  }
  auto schema = arrow::schema({arrow::field("name", arrow::utf8()), arrow::field("version", arrow::uint64()),
                               arrow::field("bytes", arrow::uint64()), arrow::field("ipc_length", arrow::uint64()),
                               arrow::field("rows", arrow::uint64()), arrow::field("created_ms", arrow::int64()),
                               arrow::field("holds", arrow::uint32()), arrow::field("metadata", arrow::utf8())});
  return arrow::Table::Make(schema, {value(names.Finish()), value(versions.Finish()), value(bytes.Finish()),
                                     value(ipc_lengths.Finish()), value(row_counts.Finish()), value(created.Finish()),
                                     value(holds.Finish()), value(metadata.Finish())});
}

Out list_answer(const Frame& q, const arrow::Table& table) {
  const auto bytes = ipc_bytes(table);
  return table_answer(q, segment(bytes), bytes.size(), kResponse);
}

void fake_stores() {
  const auto before = open_things();
  // hostile get answers: refused with the step's typed code; the client's ERROR (correlation =
  // the TABLE's id, 2) ends the hold; the connection goes on
  struct Case {
    const char* name;
    const char* code;
    std::function<Out(const Frame&)> make;
  };
  const std::vector<Case> cases = {
      {"a pipe, not a memfd", "ERR_SEGMENT_INVALID",
       [](const Frame& q) {
         int p[2];
         if (::pipe(p) != 0) throw std::runtime_error("pipe");
         ::close(p[1]);
         return table_answer(q, Fd(p[0]), 64);
       }},
      {"an unsealed memfd", "ERR_SEGMENT_UNSEALED", [](const Frame& q) { return table_answer(q, segment(kTableBytes, 0), kTableBytes.size()); }},
      {"lease seals only (no F_SEAL_WRITE)", "ERR_SEGMENT_UNSEALED",
       [](const Frame& q) {
         return table_answer(q, segment(kTableBytes, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW), kTableBytes.size());
       }},
      {"two fds", "ERR_PROTOCOL", [](const Frame& q) { return table_answer(q, segment(kTableBytes), kTableBytes.size(), kResponse | kLeased, 1); }},
      {"ipc_length past the segment", "ERR_SEGMENT_BOUNDS", [](const Frame& q) { return table_answer(q, segment(kTableBytes), 1ull << 40); }},
      {"garbage IPC bytes", "ERR_IPC_",
       [](const Frame& q) {
         std::vector<uint8_t> garbage(64, 7);
         const uint8_t header[8] = {0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0};
         std::memcpy(garbage.data(), header, sizeof header);
         return table_answer(q, segment(garbage), garbage.size());
       }},
  };
  for (auto& c : cases) {
    FakeStore fake([&](const Frame& q) {
      std::vector<Out> out;
      if (op(q) == "get") out.push_back(c.make(q));
      else out.push_back(stats_answer(q));
      return out;
    });
    check(std::string("hostile get: ") + c.name, [&] {
      auto client = StoreClient::open(fake.address(), 5000ms);
      expect_error(std::string("hostile get: ") + c.name + ": " + c.code, c.code, [&] { client->get("x"); });
      report(std::string("hostile get: ") + c.name + ": the connection goes on", client->stats().memory == 1, "");
      report(std::string("hostile get: ") + c.name + ": ERROR to the store ends the hold",
             fake.received([](const Frame& f) { return f.kind == Kind::Error && f.correlation_id == 2; }), "no ERROR");
    });
  }

  // listings and numbers: bounded and checked
  {
    FakeStore fake([](const Frame& q) {
      std::vector<Out> out;
      const std::string prefix = q.get("prefix").value_or("");
      if (op(q) == "list" && prefix == "bad") out.push_back(list_answer(q, *kTable->Slice(0, 3)));
      else if (op(q) == "list" && prefix == "json") out.push_back(list_answer(q, *listing(1, "{\"k\": 1}")));
      else if (op(q) == "list" && prefix == "huge") {
        // a billion rows in a few hundred bytes: a column of nulls
        auto nulls = value(arrow::MakeArrayOfNull(arrow::null(), 1'000'000'000));
        out.push_back(list_answer(q, *arrow::Table::Make(arrow::schema({arrow::field("name", arrow::null())}), {nulls})));
      } else if (op(q) == "list") out.push_back(list_answer(q, *listing(11)));
      else if (op(q) == "stats") out.push_back(stats_answer(q, {{"bytes", std::string(25, '9')}}));
      else if (op(q) == "delete") out.push_back(stats_answer(q, {{"version", "-1"}}));
      return out;
    }, "store", 3);
    check("hostile listings", [&] {
      StoreClientOptions options;
      options.max_list_entries = 10;
      auto client = StoreClient::open(fake.address(), 5000ms, options);
      expect_error("a listing over max_list_entries: ERR_RESOURCE_LIMIT", kErrResourceLimit, [&] { client->list(); });
      expect_error("a billion-row listing: ERR_RESOURCE_LIMIT", kErrResourceLimit, [&] { client->list("huge"); });
      expect_error("a listing of other columns: ERR_PROTOCOL", "ERR_PROTOCOL", [&] { client->list("bad"); });
      expect_error("listing metadata not a JSON object of strings: ERR_PROTOCOL", "ERR_PROTOCOL", [&] { client->list("json"); });
      expect_error("a 25-digit number: ERR_PROTOCOL", "ERR_PROTOCOL", [&] { client->stats(); });
      expect_error("a version of -1: ERR_PROTOCOL", "ERR_PROTOCOL", [&] { client->remove("x"); });
      client->close();
      options.max_list_entries = 11;
      options.max_list_bytes = 256;
      client = StoreClient::open(fake.address(), 5000ms, options);
      expect_error("a listing over max_list_bytes: ERR_RESOURCE_LIMIT", kErrResourceLimit, [&] { client->list(); });
      client->close();
      options.max_list_bytes = 1 << 20;
      client = StoreClient::open(fake.address(), 5000ms, options);
      auto entries = client->list();
      report("a listing at the bound is taken", entries.size() == 11 && entries[0].name == "n0" && entries[10].version == 11, "");
    });
  }

  // an unasked held TABLE is handed back (RELEASE); a STORE answer with an fd is fatal
  {
    FakeStore fake([](const Frame& q) {
      std::vector<Out> out;
      if (op(q) == "stats") {
        Out unasked = table_answer(q, segment(kTableBytes), kTableBytes.size());
        unasked.frame.correlation_id = 999;
        out.push_back(std::move(unasked));
        out.push_back(stats_answer(q));
      } else {
        Out o = stats_answer(q);
        o.fds.push_back(segment(kTableBytes));
        out.push_back(std::move(o));
      }
      return out;
    });
    check("frames a store never sends", [&] {
      auto client = StoreClient::open(fake.address(), 5000ms);
      client->stats();
      expect_error("a STORE answer with an fd: fatal ERR_PROTOCOL", "ERR_PROTOCOL", [&] { client->remove("x"); });
      report("... and the client is closed", !client->is_open(), "");
      report("an unasked held table is handed back (RELEASE)",
             fake.received([](const Frame& f) { return f.kind == Kind::Release && f.correlation_id == 2; }), "no RELEASE");
      report("the store is told (ERROR ERR_PROTOCOL)", fake.received([](const Frame& f) {
               return f.kind == Kind::Error && f.get("code") == std::optional<std::string>("ERR_PROTOCOL");
             }),
             "no ERROR");
    });
  }

  // not a store; a bad frame; a store that hangs up with a request pending
  {
    FakeStore fake([](const Frame&) { return std::vector<Out>{}; }, "lease");
    expect_error("a listener that is not a store: ERR_PROTOCOL", "ERR_PROTOCOL",
                 [&] { StoreClient::open(fake.address(), 5000ms); }, "not a table store");
  }
  {
    FakeStore fake([](const Frame&) {
      Out o;
      o.raw = {'n', 'o', 't', ' ', 'a', ' ', 'f', 'r', 'a', 'm', 'e'};
      std::vector<Out> out;
      out.push_back(std::move(o));
      return out;
    });
    auto client = StoreClient::open(fake.address(), 5000ms);
    expect_error("a bad frame: fatal ERR_PROTOCOL", "ERR_PROTOCOL", [&] { client->stats(); });
  }
  {
    FakeStore fake([](const Frame&) -> std::vector<Out> {
      throw Error("ERR_CLOSED", "the fake store hangs up");
    });
    auto client = StoreClient::open(fake.address(), 5000ms);
    expect_error("the store hangs up: ERR_PEER_CLOSED", "ERR_PEER_CLOSED", [&] { client->stats(); });
  }

  // a watch flood ends the watch with ERR_RESOURCE_LIMIT after the events it kept
  {
    FakeStore fake([](const Frame& q) {
      std::vector<Out> out;
      if (op(q) == "stats") out.push_back(stats_answer(q));
      if (op(q) != "watch") return out;
      out.push_back(stats_answer(q));
      out.back().frame.metadata.clear();
      for (int i = 0; i < 5; i++) {
        Out e;
        e.frame.kind = Kind::Store;
        e.frame.correlation_id = q.message_id;
        std::string name = "n";
        name += std::to_string(i);
        e.frame.metadata = {{"event", "put"}, {"name", name}, {"version", std::to_string(i + 1)}, {"bytes", "8"}};
        out.push_back(std::move(e));
      }
      return out;
    });
    check("a watch flood", [&] {
      StoreClientOptions options;
      options.max_queued_events = 3;
      auto client = StoreClient::open(fake.address(), 5000ms, options);
      auto watch = client->watch();
      client->stats();  // reads the 5 events while nobody takes them
      std::vector<std::string> names;
      expect_error("a watch flood: ERR_RESOURCE_LIMIT", kErrResourceLimit, [&] {
        for (;;) names.push_back(watch->next(2000ms).value().name);
      });
      report("... after the events it kept", names == std::vector<std::string>{"n0", "n1", "n2"}, std::to_string(names.size()));
      report("... and unwatch was sent", fake.received([](const Frame& f) { return op(f) == "unwatch"; }), "");
      client->stats();
    });
  }
  expect_nothing_left("fake stores: no fds or mappings left", before);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: arrow-shm-cpp-store-test STORE GOLD_DIR\n");
    return 2;
  }
  check("real store", [&] { real_store(argv[1], argv[2]); });
  check("fake stores", [&] { fake_stores(); });
  return failures ? 1 : 0;
}
