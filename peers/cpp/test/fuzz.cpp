// arrow-shm-cpp-fuzz: a deterministic MUTATION fuzzer of the C++ peer's parsers.
//
// This is NOT a coverage-guided fuzzer: the machine this was written on has only g++ (no clang,
// so no libFuzzer / -fsanitize=fuzzer), so inputs are blind mutations of a seed corpus and the
// corpus never grows from coverage feedback. It is meant to run under ASan+UBSan
// (scripts/sanitize.sh builds it into .build/cpp-asan), where a memory error aborts the process.
//
// Each iteration takes a corpus entry (Arrow IPC streams / ARROW1 files from the files and
// directories on the command line, plus a few frames built with encode_frame), applies 1-4
// stacked mutations (bit flips, byte sets, truncations, length-field overwrites with boundary
// values, chunk insert/delete/duplicate, splices with another entry, and flatbuffer-aware ones:
// shared offsets and huge counts, see mutate_flatbuffer) and feeds the result to
//   decode_frame, validate_stream, decode_table and (ARROW1 inputs) stream_from_file_bytes;
// every 8th iteration also calls open_segment with boundary offsets/lengths against a memfd, and
// every 4th runs a receiving Channel against a scripted hostile peer (channel_case below).
// The only allowed failure is arrow_shm::Error. Any other exception makes the run fail (exit 1);
// a crash is reported by the sanitizer. Either way the input is first written to
// <crashers>/crash-<iteration>-<hash> so it can be replayed with `--replay FILE...`.
//
// Usage: arrow-shm-cpp-fuzz [--iterations N] [--seed S] [--max-len BYTES] [--crashers DIR]
//                           [--replay] CORPUS_FILE_OR_DIR...
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arrow/buffer.h>
#include <arrow/table.h>

#include "arrow_shm.hpp"
#include "arrow_shm/channel.hpp"

// From the sanitizer runtime when linked with -fsanitize=...; weak so a plain build links too.
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

// xorshift64*: fixed, portable sequence for a given seed.
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
};

// What is being executed, for the death callback (a sanitizer report or a non-Error exception).
const Bytes* g_current = nullptr;
uint64_t g_iteration = 0;
std::string g_crashers = "peers/cpp/test/crashers";

uint64_t fnv1a(const Bytes& b) {
  uint64_t h = 1469598103934665603ull;
  for (uint8_t c : b) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Async-signal-safe enough for a dying process: open/write/close only.
void save_current(const char* why) {
  if (!g_current) return;
  char name[512];
  std::snprintf(name, sizeof name, "%s/crash-%llu-%016llx", g_crashers.c_str(),
                static_cast<unsigned long long>(g_iteration), static_cast<unsigned long long>(fnv1a(*g_current)));
  ::mkdir(g_crashers.c_str(), 0755);
  int fd = ::open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    const uint8_t* p = g_current->data();
    size_t left = g_current->size();
    while (left) {
      ssize_t w = ::write(fd, p, left);
      if (w <= 0) break;
      p += w;
      left -= static_cast<size_t>(w);
    }
    ::close(fd);
  }
  std::fprintf(stderr, "arrow-shm-cpp-fuzz: %s at iteration %llu, input saved to %s\n", why,
               static_cast<unsigned long long>(g_iteration), name);
}

// The open_segment case being run (it has no input bytes to save), empty when none.
char g_segment_case[256] = "";
uint64_t g_channel_tables = 0;  // tables a fuzzed Channel accepted

void on_death() {
  save_current("sanitizer report");
  if (g_segment_case[0]) std::fprintf(stderr, "arrow-shm-cpp-fuzz: during %s\n", g_segment_case);
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// ---- mutations ----

constexpr uint64_t kInteresting[] = {0,          1,          2,          7,          8,
                                     0x3f,       0x40,       0x7f,       0x80,       0xff,
                                     0x7fff,     0x8000,     0xffff,     0x10000,    0x7fffffff,
                                     0x80000000, 0xfffffff8, 0xffffffff, 0x100000000ull,
                                     0x7fffffffffffffffull,  0x8000000000000000ull, 0xffffffffffffffffull};

void overwrite_int(Bytes& b, size_t at, uint64_t v, size_t width) {
  if (at + width > b.size()) return;
  std::memcpy(&b[at], &v, width);  // little-endian host (static_assert in protocol.cpp)
}

// Offsets worth hitting: IPC length prefixes (after a 0xFFFFFFFF continuation marker) and the
// length / count fields of a frame header and of its key/value block.
std::vector<size_t> length_fields(const Bytes& b) {
  std::vector<size_t> at;
  for (size_t i = 0; i + 8 <= b.size(); i += 4) {
    uint32_t v;
    std::memcpy(&v, &b[i], 4);
    if (v == 0xffffffffu) at.push_back(i + 4);
  }
  if (b.size() >= 64 && std::memcmp(b.data(), "ASHM", 4) == 0) {
    for (size_t f : {8, 12, 32, 40, 48, 64}) at.push_back(f);
    for (size_t i = 68; i + 4 <= b.size() && at.size() < 64; i += 4) at.push_back(i);
  }
  return at;
}

// ---- structure-aware mutations of the flatbuffer metadata (§14.1: shared offsets, huge counts) ----

uint32_t u32_at(const Bytes& b, size_t at) {
  uint32_t v;
  std::memcpy(&v, &b[at], 4);
  return v;
}

// The metadata of each encapsulated message that follows a continuation marker: [begin, end).
std::vector<std::pair<size_t, size_t>> metadata_regions(const Bytes& b) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t at : length_fields(b)) {
    if (at + 4 > b.size() || (at >= 4 && u32_at(b, at - 4) != 0xffffffffu)) continue;
    const uint64_t len = u32_at(b, at);
    if (len >= 8 && at + 4 + len <= b.size()) out.emplace_back(at + 4, at + 4 + len);
  }
  return out;
}

// 4-aligned positions in [begin, end) holding what looks like a forward offset inside the region.
std::vector<size_t> offset_fields(const Bytes& b, size_t begin, size_t end) {
  std::vector<size_t> out;
  for (size_t at = begin; at + 4 <= end; at += 4) {
    const uint32_t v = u32_at(b, at);
    if (v >= 4 && v % 4 == 0 && at + v + 4 <= end) out.push_back(at);
  }
  return out;
}

// Makes metadata share what a flatbuffer may legally share, the way the bombs of attacks.py do:
// an offset re-aimed at another offset's target, every element of a vector of offsets aimed at
// one table or string, or a vector/string length set to a huge count.
void mutate_flatbuffer(Bytes& b, Rng& r) {
  auto regions = metadata_regions(b);
  if (regions.empty()) return;
  auto [begin, end] = regions[r.below(regions.size())];
  auto offsets = offset_fields(b, begin, end);
  if (offsets.empty()) return;
  const size_t from = offsets[r.below(offsets.size())];
  const size_t target = from + u32_at(b, from);
  switch (r.below(3)) {
    case 0: {  // another offset before `target` now points at it too
      const size_t at = offsets[r.below(offsets.size())];
      if (at < target) overwrite_int(b, at, target - at, 4);
      return;
    }
    case 1: {  // a vector of offsets at `target`: all of its elements point at the first one's target
      const uint64_t n = u32_at(b, target);
      if (n < 2 || target + 4 + 4 * n > end) return;
      const size_t first = target + 4, shared = first + u32_at(b, first);
      for (uint64_t k = 0; k < n; k++) {
        const size_t e = first + 4 * k;
        if (e < shared) overwrite_int(b, e, shared - e, 4);
      }
      return;
    }
    default: {  // the count at `target` (a vector or string length) becomes huge
      static const uint64_t counts[] = {65536, 65537, 100000, 1u << 24, 10000000, 0x7fffffff};
      overwrite_int(b, target, counts[r.below(std::size(counts))], 4);
      return;
    }
  }
}

void mutate_once(Bytes& b, const std::vector<Bytes>& corpus, Rng& r) {
  switch (r.below(11)) {
    case 9:
    case 10:
      mutate_flatbuffer(b, r);
      return;
    case 0: {  // bit flips
      if (b.empty()) return;
      for (uint64_t k = 1 + r.below(8); k--;) b[r.below(b.size())] ^= static_cast<uint8_t>(1u << r.below(8));
      return;
    }
    case 1: {  // byte sets
      if (b.empty()) return;
      static const uint8_t vals[] = {0, 1, 0x7f, 0x80, 0xff};
      for (uint64_t k = 1 + r.below(4); k--;)
        b[r.below(b.size())] = r.below(2) ? vals[r.below(sizeof vals)] : static_cast<uint8_t>(r.next());
      return;
    }
    case 2:  // truncation
      b.resize(r.below(b.size() + 1));
      return;
    case 3:
    case 4: {  // length-field overwrite with a boundary value (targeted, else any 4-aligned offset)
      if (b.size() < 4) return;
      auto fields = length_fields(b);
      size_t at = (!fields.empty() && r.below(4)) ? fields[r.below(fields.size())] : (r.below(b.size()) & ~size_t{3});
      uint64_t v = kInteresting[r.below(std::size(kInteresting))];
      if (r.below(3) == 0) v = b.size() + r.below(17) - 8;  // near the real size
      overwrite_int(b, at, v, r.below(2) ? 4 : 8);
      return;
    }
    case 5: {  // splice: a prefix of this entry + a suffix of another
      const Bytes& o = corpus[r.below(corpus.size())];
      size_t cut = r.below(b.size() + 1), from = r.below(o.size() + 1);
      b.resize(cut);
      b.insert(b.end(), o.begin() + static_cast<ptrdiff_t>(from), o.end());
      return;
    }
    case 6: {  // delete a chunk
      if (b.empty()) return;
      size_t at = r.below(b.size()), n = 1 + r.below(std::min<size_t>(64, b.size() - at));
      b.erase(b.begin() + static_cast<ptrdiff_t>(at), b.begin() + static_cast<ptrdiff_t>(at + n));
      return;
    }
    case 7: {  // insert random bytes
      size_t at = r.below(b.size() + 1), n = 1 + r.below(16);
      Bytes ins(n);
      for (auto& c : ins) c = static_cast<uint8_t>(r.next());
      b.insert(b.begin() + static_cast<ptrdiff_t>(at), ins.begin(), ins.end());
      return;
    }
    case 8: {  // duplicate a chunk
      if (b.empty()) return;
      size_t at = r.below(b.size()), n = 1 + r.below(std::min<size_t>(256, b.size() - at));
      Bytes chunk(b.begin() + static_cast<ptrdiff_t>(at), b.begin() + static_cast<ptrdiff_t>(at + n));
      size_t to = r.below(b.size() + 1);
      b.insert(b.begin() + static_cast<ptrdiff_t>(to), chunk.begin(), chunk.end());
      return;
    }
  }
}

// ---- targets ----

struct Counts {
  uint64_t ok = 0, errors = 0;
};

template <typename F>
void run_target(Counts& c, F&& f) {
  try {
    f();
    c.ok++;
  } catch (const arrow_shm::Error&) {
    c.errors++;
  }
  // anything else propagates to main() and fails the run
}

void execute(const Bytes& input, Counts& frames, Counts& streams, Counts& tables, Counts& files) {
  g_current = &input;
  // A copy in an allocation of exactly its size, so ASan sees any read past the end of the input
  // (a std::vector's spare capacity would hide it).
  auto heap = std::make_unique<uint8_t[]>(input.size());
  if (!input.empty()) std::memcpy(heap.get(), input.data(), input.size());
  run_target(frames, [&] {
    auto f = arrow_shm::decode_frame(heap.get(), input.size());
    (void)arrow_shm::encode_frame(f);  // whatever decoded must encode again
  });
  run_target(streams, [&] { (void)arrow_shm::validate_stream(heap.get(), input.size()); });
  run_target(tables, [&] {
    auto table = arrow_shm::decode_table(arrow::Buffer::Wrap(heap.get(), input.size()));
    if (table) (void)table->num_rows();
  });
  if (input.size() >= 6 && std::memcmp(input.data(), "ARROW1", 6) == 0)
    run_target(files, [&] { (void)arrow_shm::stream_from_file_bytes(input, 0, /*seal=*/false); });
  g_current = nullptr;
}

// open_segment (§5.1) with the peer-controlled ipc_offset / ipc_length of a TABLE frame: boundary
// values against a memfd of a boundary size, sealed or not. On success the whole IPC range is read.
void segment_case(Rng& r, Counts& c) {
  static const uint64_t sizes[] = {1, 7, 8, 9, 4095, 4096, 4097, 8192, 65536};
  const uint64_t size = sizes[r.below(std::size(sizes))];
  auto pick = [&]() -> uint64_t {
    switch (r.below(4)) {
      case 0: return kInteresting[r.below(std::size(kInteresting))];
      case 1: return size + r.below(17) - 8;
      case 2: return r.below(size + 1) & ~uint64_t{7};
      default: return r.below(size + 1);
    }
  };
  uint64_t offset = pick(), length = pick();
  const bool seal = r.below(4) != 0, allow_unsealed = r.below(2), to_end = r.below(4) == 0;
  const uint64_t max_bytes = r.below(4) ? arrow_shm::kDefaultMaxMessageBytes : r.below(size + 1);
  std::snprintf(g_segment_case, sizeof g_segment_case,
                "open_segment(size %llu, offset %llu, length %llu, sealed %d, allow_unsealed %d, max %llu, to_end %d)",
                static_cast<unsigned long long>(size), static_cast<unsigned long long>(offset),
                static_cast<unsigned long long>(length), seal, allow_unsealed, static_cast<unsigned long long>(max_bytes),
                to_end);
  run_target(c, [&] {
    arrow_shm::Fd fd = arrow_shm::make_segment(size, 0, seal, [](uint8_t* p, uint64_t n) { std::memset(p, 0xab, n); });
    arrow_shm::Mapping m = arrow_shm::open_segment(fd.get(), offset, length, allow_unsealed, max_bytes, to_end);
    if (offset + length > m.size() || length == 0) throw std::logic_error("open_segment accepted a range outside the segment");
    volatile uint8_t sum = 0;
    for (uint64_t i = 0; i < length; i += 512) sum = sum + m.data()[offset + i];
    sum = sum + m.data()[offset + length - 1];
  });
  g_segment_case[0] = 0;
}

// ---- a whole receiving Channel (channel.cpp) against a scripted hostile peer ----
// A HELLO (sometimes mutated), then 1-4 datagrams: TABLE frames carrying 0-2 fds (a memfd, sealed
// or not, holding a corpus entry, mutated or not, at a boundary offset/length) and other frames,
// any of them possibly mutated. The script is written into one end of a socketpair (then shut for
// writing), the other end goes through Channel::accept and receive_message()/table() until the
// channel gives up. Only arrow_shm::Error may escape. Deterministic: a failing case is reproduced
// by the same --seed and --iterations (its datagrams are also saved, concatenated, as a crasher).

void send_raw(int sock, const Bytes& b, const std::vector<int>& fds) {
  iovec iov{const_cast<uint8_t*>(b.data()), b.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  (void)::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);  // a full buffer just drops the rest
}

// A memfd as a hostile peer may make it (any size, 0 included): `payload` at offset `at`.
arrow_shm::Fd raw_segment(uint64_t at, const Bytes& payload, bool seal) {
  arrow_shm::Fd fd(::memfd_create("arrow-shm-fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) arrow_shm::throw_errno("memfd_create", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(at + payload.size())) != 0) arrow_shm::throw_errno("ftruncate", errno);
  if (!payload.empty() && ::pwrite(fd.get(), payload.data(), payload.size(), static_cast<off_t>(at)) < 0)
    arrow_shm::throw_errno("pwrite", errno);
  if (seal && ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) != 0)
    arrow_shm::throw_errno("fcntl(F_ADD_SEALS)", errno);
  return fd;
}

void channel_case(const std::vector<Bytes>& corpus, const std::vector<Bytes>& frame_seeds, Rng& r, Counts& c) {
  using namespace arrow_shm;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair", errno);
  Fd peer(sv[0]), mine(sv[1]);
  Bytes script;  // what was sent, for the crasher file
  auto send = [&](Bytes b, const std::vector<int>& fds) {
    if (r.below(6) == 0) mutate_once(b, frame_seeds, r);
    send_raw(peer.get(), b, fds);
    uint32_t n = static_cast<uint32_t>(b.size());
    script.insert(script.end(), reinterpret_cast<uint8_t*>(&n), reinterpret_cast<uint8_t*>(&n) + 4);
    script.insert(script.end(), b.begin(), b.end());
  };
  Frame hello;
  hello.kind = Kind::Hello;
  hello.metadata = {{"min_version", "1"}, {"max_version", "1"}, {"capabilities", ""}, {"implementation", "fuzz"}};
  send(encode_frame(hello), {});
  std::vector<Fd> keep;  // segments stay open on this side until the case ends
  for (uint64_t k = 1 + r.below(4), id = 1; k--; id++) {
    Frame f;
    std::vector<int> fds;
    if (r.below(10) < 7) {
      Bytes payload = corpus[r.below(corpus.size())];
      if (r.below(2)) mutate_once(payload, corpus, r);
      static const uint64_t offsets[] = {0, 0, 0, 8, 64, 4096, 4, 0xfffffffffffffff8ull};
      f.kind = Kind::Table;
      f.message_id = id;
      f.flags = static_cast<uint8_t>(r.below(3) ? 0 : (1u << r.below(3)));
      f.ipc_offset = offsets[r.below(std::size(offsets))];
      f.ipc_length = r.below(4) ? payload.size() : kInteresting[r.below(std::size(kInteresting))];
      f.fd_count = r.below(8) ? 1 : static_cast<uint32_t>(r.below(3));
      if (r.below(3) == 0) f.metadata = {{"name", "fuzz"}};
      if (r.below(4) == 0 && payload.size() + 128 <= kMaxFrameBytes) {
        // §5.3: the stream inside the frame (sometimes with LEASED or an fd as well)
        f.flags = static_cast<uint8_t>(kInline | (r.below(4) ? 0 : kLeased));
        f.fd_count = r.below(8) ? 0 : 1;
        if (f.fd_count) {
          keep.push_back(raw_segment(0, payload, true));
          fds.push_back(keep.back().get());
        }
        send(encode_frame(f, payload.data(), payload.size()), fds);
        continue;
      }
      const uint64_t at = f.ipc_offset < 8192 ? f.ipc_offset : 0;
      keep.push_back(raw_segment(at, payload, /*seal=*/r.below(5) != 0));
      for (uint64_t nfd = r.below(8) ? 1 : r.below(3); nfd--;) fds.push_back(keep.back().get());
    } else {
      static const Kind kinds[] = {Kind::Ack, Kind::Release, Kind::Error, Kind::Goodbye, Kind::Hello, Kind::Welcome};
      f.kind = kinds[r.below(std::size(kinds))];
      f.message_id = id;
      f.correlation_id = r.below(4);
      if (f.kind == Kind::Error) f.metadata = {{"code", "ERR_PROTOCOL"}, {"message", "fuzz"}};
    }
    send(encode_frame(f), fds);
  }
  ::shutdown(peer.get(), SHUT_WR);
  Bytes* saved = const_cast<Bytes*>(g_current);
  g_current = &script;
  run_target(c, [&] {
    ChannelOptions options;
    options.allow_unsealed = r.below(4) == 0;
    auto ch = Channel::accept(std::move(mine), std::chrono::milliseconds(2000), options);
    for (int k = 0; k < 8 && ch->is_open(); k++) {
      try {
        auto m = ch->receive_message(std::chrono::milliseconds(2000));
        if (!m) break;
        g_channel_tables++;
        try {
          auto t = m->table();
          if (t) (void)t->num_rows();
        } catch (const Error&) {
        }
      } catch (const Error& e) {
        if (e.code() == "ERR_PEER_CLOSED" || e.code() == "ERR_TIMEOUT" || e.code() == "ERR_CLOSED") throw;
      }
    }
  });
  g_current = saved;
}

// Seed frames for decode_frame (the IPC corpus alone almost never gets past the magic).
std::vector<Bytes> seed_frames() {
  std::vector<Bytes> out;
  arrow_shm::Frame f;
  f.kind = arrow_shm::Kind::Hello;
  f.metadata = {{"implementation", "fuzz"}, {"versions", "1"}, {"caps", "leases,requests"}};
  out.push_back(arrow_shm::encode_frame(f));
  f = {};
  f.kind = arrow_shm::Kind::Table;
  f.flags = arrow_shm::kRequest;
  f.message_id = 7;
  f.ipc_offset = 4096;
  f.ipc_length = 123456;
  f.fd_count = 1;
  f.metadata = {{"name", "t\xc3\xa9st"}, {"", ""}};
  out.push_back(arrow_shm::encode_frame(f));
  f = {};
  f.kind = arrow_shm::Kind::Table;
  f.flags = arrow_shm::kInline;
  f.message_id = 8;
  f.metadata = {{"name", "inline"}};
  const uint8_t eos[] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  out.push_back(arrow_shm::encode_frame(f, eos, sizeof eos));
  f = {};
  f.kind = arrow_shm::Kind::Error;
  f.correlation_id = 7;
  f.metadata = {{"code", "ERR_PROTOCOL"}, {"message", std::string(300, 'x')}};
  out.push_back(arrow_shm::encode_frame(f));
  f = {};
  f.kind = arrow_shm::Kind::Ack;
  out.push_back(arrow_shm::encode_frame(f));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t iterations = 20000, seed = 0x5eed, max_len = 64 * 1024;
  bool replay = false;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--iterations") iterations = std::stoull(value());
    else if (a == "--seed") seed = std::stoull(value(), nullptr, 0);
    else if (a == "--max-len") max_len = std::stoull(value());
    else if (a == "--crashers") g_crashers = value();
    else if (a == "--replay") replay = true;
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s [--iterations N] [--seed S] [--max-len BYTES] [--crashers DIR] [--replay] CORPUS...\n", argv[0]);
      return 0;
    } else inputs.emplace_back(a);
  }
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(on_death);

  std::vector<Bytes> corpus;
  std::vector<std::string> names;
  for (auto& in : inputs) {
    std::vector<fs::path> files;
    if (fs::is_directory(in)) {
      for (auto& e : fs::directory_iterator(in))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());  // deterministic order
    } else {
      files.push_back(in);
    }
    for (auto& f : files) {
      auto n = f.filename().string();
      if (n.ends_with(".gz") || n.ends_with(".md") || n.ends_with(".json")) continue;
      Bytes b = read_file(f);
      if (!replay && (b.empty() || b.size() > max_len)) continue;
      corpus.push_back(std::move(b));
      names.push_back(f.string());
    }
  }
  Counts frames, streams, tables, files, segments, channels;
  try {
    if (replay) {
      for (size_t i = 0; i < corpus.size(); i++) {
        g_iteration = i;
        execute(corpus[i], frames, streams, tables, files);
        std::printf("ok: %s\n", names[i].c_str());
      }
    } else {
      // Frames get their own mutation each iteration (they are a small part of the corpus).
      std::vector<Bytes> frame_seeds = seed_frames();
      for (auto& f : frame_seeds) corpus.push_back(f);
      if (corpus.empty()) {
        std::fprintf(stderr, "arrow-shm-cpp-fuzz: empty corpus\n");
        return 2;
      }
      // The unmutated corpus first, then the mutations.
      for (size_t i = 0; i < corpus.size(); i++) execute(corpus[i], frames, streams, tables, files);
      Rng r{seed * 0x9e3779b97f4a7c15ull + 1};
      for (g_iteration = 0; g_iteration < iterations; g_iteration++) {
        Bytes b = corpus[r.below(corpus.size())];
        for (uint64_t k = 1 + r.below(4); k--;) mutate_once(b, corpus, r);
        execute(b, frames, streams, tables, files);
        Bytes fb = frame_seeds[r.below(frame_seeds.size())];
        for (uint64_t k = 1 + r.below(3); k--;) mutate_once(fb, frame_seeds, r);
        execute(fb, frames, streams, tables, files);
        if (g_iteration % 8 == 0) segment_case(r, segments);
        if (g_iteration % 4 == 0) channel_case(corpus, frame_seeds, r, channels);
        if ((g_iteration + 1) % 100000 == 0)
          std::fprintf(stderr, "arrow-shm-cpp-fuzz: %llu iterations\n", static_cast<unsigned long long>(g_iteration + 1));
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "arrow-shm-cpp-fuzz: iteration %llu: %s%s%s\n", static_cast<unsigned long long>(g_iteration),
                 g_segment_case, g_segment_case[0] ? ": " : "", e.what());
    save_current((std::string("non-arrow_shm::Error exception: ") + e.what()).c_str());
    return 1;
  } catch (...) {
    save_current("unknown exception");
    return 1;
  }
  std::printf("arrow-shm-cpp-fuzz: %llu inputs (corpus %zu, seed %llu): decode_frame %llu ok / %llu Error, "
              "validate_stream %llu ok / %llu Error, decode_table %llu ok / %llu Error, ARROW1 %llu ok / %llu Error, "
              "open_segment %llu ok / %llu Error, Channel %llu ok / %llu Error (%llu tables accepted)\n",
              static_cast<unsigned long long>(replay ? corpus.size() : iterations), corpus.size(),
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(frames.ok),
              static_cast<unsigned long long>(frames.errors), static_cast<unsigned long long>(streams.ok),
              static_cast<unsigned long long>(streams.errors), static_cast<unsigned long long>(tables.ok),
              static_cast<unsigned long long>(tables.errors), static_cast<unsigned long long>(files.ok),
              static_cast<unsigned long long>(files.errors), static_cast<unsigned long long>(segments.ok),
              static_cast<unsigned long long>(segments.errors), static_cast<unsigned long long>(channels.ok),
              static_cast<unsigned long long>(channels.errors), static_cast<unsigned long long>(g_channel_tables));
  return 0;
}
