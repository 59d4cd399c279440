// The C++ program of the stream bench contract (issue #16; its Rust twin:
// peers/rust/examples/stream_peer.rs):
//   stream_peer consume --address A --batches N [--spin-micros S]
//   stream_peer produce --address A --bytes B --batches N [--interval-ms I] [--capacity-bytes C]
//   stream_peer pong --address A [--spin-micros S]
//   stream_peer ping --address A --bytes B --rounds N [--spin-micros S]
// Batches have one row: `sent_ms: float64` (CLOCK_MONOTONIC, ms) and `payload: binary` (B bytes
// of 0x07, built once). stdout: the contract's JSON lines only; errors go to stderr, exit 1.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include <arrow/api.h>

#include "arrow_shm/stream.hpp"

using namespace arrow_shm;

namespace {

constexpr int kWarmUpRounds = 100;
constexpr auto kConnectFor = std::chrono::milliseconds(5000);
constexpr auto kFinishTimeout = std::chrono::milliseconds(60000);

double now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

// User + system CPU of the whole process so far, in ms.
double cpu_ms() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto ms = [](timeval t) { return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3; };
  return ms(ru.ru_utime) + ms(ru.ru_stime);
}

struct Args {
  std::vector<std::string> args;
  const std::string* get(const std::string& flag) const {
    auto it = std::find(args.begin(), args.end(), flag);
    return it == args.end() || it + 1 == args.end() ? nullptr : &*(it + 1);
  }
  double num(const std::string& flag, std::optional<double> fallback = std::nullopt) const {
    const std::string* v = get(flag);
    if (!v) {
      if (!fallback) throw std::runtime_error(flag + " is required");
      return *fallback;
    }
    size_t used = 0;
    const double x = std::stod(*v, &used);
    if (used != v->size()) throw std::runtime_error(flag + ": not a number: " + *v);
    return x;
  }
  std::string address() const {
    const std::string* v = get("--address");
    if (!v) throw std::runtime_error("--address is required");
    return *v;
  }
};

std::shared_ptr<arrow::Schema> stream_schema() {
  return arrow::schema({arrow::field("sent_ms", arrow::float64(), false), arrow::field("payload", arrow::binary(), false)});
}

// One batch of one row. The payload array (built once) and the 8-byte sent_ms buffer are reused:
// each write serializes the batch before returning.
class BatchMaker {
 public:
  explicit BatchMaker(size_t bytes) : schema_(stream_schema()) {
    auto data = arrow::AllocateBuffer(static_cast<int64_t>(bytes)).ValueOrDie();
    std::memset(data->mutable_data(), 7, bytes);
    auto offsets = arrow::AllocateBuffer(8).ValueOrDie();
    const int32_t o[2] = {0, static_cast<int32_t>(bytes)};
    std::memcpy(offsets->mutable_data(), o, sizeof o);
    payload_ = std::make_shared<arrow::BinaryArray>(1, std::move(offsets), std::move(data));
    sent_ = arrow::AllocateBuffer(8).ValueOrDie();
  }
  size_t bytes() const { return static_cast<size_t>(payload_->value_length(0)); }
  std::shared_ptr<arrow::RecordBatch> make(double sent_ms) {
    std::memcpy(sent_->mutable_data(), &sent_ms, 8);
    auto sent = std::make_shared<arrow::DoubleArray>(1, sent_);
    return arrow::RecordBatch::Make(schema_, 1, {sent, payload_});
  }
  const std::shared_ptr<arrow::Schema>& schema() const { return schema_; }

 private:
  std::shared_ptr<arrow::Schema> schema_;
  std::shared_ptr<arrow::BinaryArray> payload_;
  std::shared_ptr<arrow::Buffer> sent_;
};

// Row 0's sent_ms and the payload's length, checking the shape.
std::pair<double, size_t> sent_and_size(const arrow::RecordBatch& b) {
  if (b.num_rows() != 1 || b.num_columns() != 2 || b.column(0)->type_id() != arrow::Type::DOUBLE ||
      b.column(1)->type_id() != arrow::Type::BINARY)
    throw std::runtime_error("expected one row of (float64, binary)");
  const double sent = static_cast<const arrow::DoubleArray&>(*b.column(0)).Value(0);
  const auto size = static_cast<const arrow::BinaryArray&>(*b.column(1)).value_length(0);
  return {sent, static_cast<size_t>(size)};
}

std::pair<double, double> median_p99(std::vector<double>& v) {
  if (v.empty()) return {0, 0};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[static_cast<size_t>(static_cast<double>(v.size() - 1) * q + 0.5)]; };
  return {at(0.5), at(0.99)};
}

// Listens, says ready, accepts one connection (the listener goes when it returns).
std::unique_ptr<Channel> listen_once(const std::string& address) {
  Listener listener(address);
  std::printf("{\"ready\":true}\n");
  std::fflush(stdout);
  return listener.accept();
}

// Connects, retrying while the listener is not up yet (for up to 5 s).
std::unique_ptr<Channel> connect_retrying(const std::string& address) {
  const auto until = Clock::now() + kConnectFor;
  for (;;) {
    try {
      return Channel::connect(address, kConnectFor);
    } catch (const Error&) {
      if (Clock::now() >= until) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

StreamReaderOptions reader_options(const Args& f) {
  StreamReaderOptions o;
  o.spin_micros = static_cast<uint64_t>(f.num("--spin-micros", 0));
  return o;
}

void pause_ms(double interval) {
  if (interval >= 1) {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(interval));
  } else if (interval > 0) {
    const double until = now_ms() + interval;
    while (now_ms() < until) {
    }
  }
}

void consume(const Args& f) {
  const auto expected = static_cast<size_t>(f.num("--batches"));
  auto channel = listen_once(f.address());
  auto reader = StreamReader::accept(*channel, {}, reader_options(f));
  std::vector<double> latencies;
  latencies.reserve(expected);
  double first_sent = 0, last_recv = 0;
  while (auto b = reader->read()) {
    const double sent = sent_and_size(*b->batch).first;
    last_recv = now_ms();
    if (latencies.empty()) first_sent = sent;
    latencies.push_back((last_recv - sent) * 1000);
    b->release();
  }
  const size_t n = latencies.size();
  auto [median, p99] = median_p99(latencies);
  std::printf(
      "{\"batches\":%zu,\"first_sent_ms\":%.6f,\"last_recv_ms\":%.6f,\"latency_median_us\":%.3f,"
      "\"latency_p99_us\":%.3f,\"cpu_ms\":%.3f}\n",
      n, first_sent, last_recv, median, p99, cpu_ms());
}

void produce(const Args& f) {
  BatchMaker maker(static_cast<size_t>(f.num("--bytes")));
  const auto batches = static_cast<uint64_t>(f.num("--batches"));
  const double interval = f.num("--interval-ms", 0);
  StreamWriterOptions options;
  options.capacity_bytes = static_cast<uint64_t>(f.num("--capacity-bytes", 64 << 20));
  auto channel = connect_retrying(f.address());
  auto writer = StreamWriter::open(*channel, maker.schema(), options);
  for (uint64_t i = 0; i < batches; i++) {
    if (i > 0) pause_ms(interval);
    writer->write(*maker.make(now_ms()));
  }
  writer->close(kFinishTimeout);
  std::printf("{\"cpu_ms\":%.3f}\n", cpu_ms());
}

void pong(const Args& f) {
  auto channel = listen_once(f.address());
  auto reader = StreamReader::accept(*channel, {}, reader_options(f));
  auto writer = StreamWriter::open(*channel, stream_schema());
  auto maker = std::make_unique<BatchMaker>(0);
  while (auto b = reader->read()) {
    auto [sent, size] = sent_and_size(*b->batch);
    b->release();
    if (maker->bytes() != size) maker = std::make_unique<BatchMaker>(size);
    writer->write(*maker->make(sent));
  }
  writer->close(kFinishTimeout);
  std::printf("{\"cpu_ms\":%.3f}\n", cpu_ms());
}

void ping(const Args& f) {
  BatchMaker maker(static_cast<size_t>(f.num("--bytes")));
  const auto rounds = static_cast<int>(f.num("--rounds"));
  auto channel = connect_retrying(f.address());
  auto writer = StreamWriter::open(*channel, maker.schema());
  auto reader = StreamReader::accept(*channel, kConnectFor, reader_options(f));
  std::vector<double> rtts;
  rtts.reserve(static_cast<size_t>(rounds));
  for (int round = 0; round < kWarmUpRounds + rounds; round++) {
    writer->write(*maker.make(now_ms()));
    auto reply = reader->read();
    if (!reply) throw std::runtime_error("the reply stream ended early");
    const double rtt = (now_ms() - sent_and_size(*reply->batch).first) * 1000;
    reply->release();
    if (round >= kWarmUpRounds) rtts.push_back(rtt);
  }
  writer->close(kFinishTimeout);
  while (reader->read()) {
  }
  auto [median, p99] = median_p99(rtts);
  std::printf("{\"rounds\":%d,\"rtt_median_us\":%.3f,\"rtt_p99_us\":%.3f,\"cpu_ms\":%.3f}\n", rounds, median, p99,
              cpu_ms());
}

}  // namespace

int main(int argc, char** argv) {
  Args f{std::vector<std::string>(argv + 1, argv + argc)};
  const std::string role = f.args.empty() ? "" : f.args[0];
  try {
    if (role == "consume") consume(f);
    else if (role == "produce") produce(f);
    else if (role == "pong") pong(f);
    else if (role == "ping") ping(f);
    else throw std::runtime_error("usage: stream_peer consume|produce|pong|ping --address A ... (got \"" + role + "\")");
  } catch (const Error& e) {
    std::fprintf(stderr, "stream_peer %s: %s: %s\n", role.c_str(), e.code().c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stream_peer %s: %s\n", role.c_str(), e.what());
    return 1;
  }
  return 0;
}
