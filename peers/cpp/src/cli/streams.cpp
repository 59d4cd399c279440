// The stream commands (docs/CLI.md, Streams): send --stream, recv --stream, pub, sub.
#include <cstring>
#include <fstream>
#include <iostream>

#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>

#include "arrow_shm/stream.hpp"
#include "cli.hpp"
#include "ipc_internal.hpp"

namespace arrow_shm::cli {

namespace {

// Every batch of every FILE, in order (validated); the FILEs must share one schema. The batches
// point into `data`, which therefore lives as long as they do.
struct Batches {
  std::vector<std::vector<uint8_t>> data;
  std::shared_ptr<arrow::Schema> schema;
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
};

Batches batches_of(const std::vector<std::string>& files) {
  Batches out;
  for (auto& file : files) {
    auto& bytes = out.data.emplace_back(load(file));
    auto input = std::make_shared<arrow::io::BufferReader>(arrow::Buffer::Wrap(bytes.data(), bytes.size()));
    std::shared_ptr<arrow::Schema> schema;
    std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
    if (bytes.size() >= 6 && std::memcmp(bytes.data(), "ARROW1", 6) == 0) {
      auto reader = unwrap(arrow::ipc::RecordBatchFileReader::Open(input));
      schema = reader->schema();
      for (int i = 0; i < reader->num_record_batches(); i++) batches.push_back(unwrap(reader->ReadRecordBatch(i)));
    } else {
      validate_stream(bytes.data(), bytes.size());  // the receiver's framing checks first: typed errors
      auto reader = unwrap(arrow::ipc::RecordBatchStreamReader::Open(input));
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

// Reads a whole stream, then frees the reader and closes its channel; --out gets the prologue,
// every record's messages, the end-of-stream marker.
void drain(std::unique_ptr<StreamReader> stream, Channel& channel, const Options& o) {
  StreamReader& reader = *stream;
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
  if (o.print) {
    std::cout << "== stream: " << batches << " batches ==\n";
    if (!reader.metadata().empty()) {
      std::cout << "metadata: ";
      for (size_t i = 0; i < reader.metadata().size(); i++)
        std::cout << (i ? ", " : "") << reader.metadata()[i].first << "=" << reader.metadata()[i].second;
      std::cout << "\n";
    }
    std::cout << "schema: " << schema_line(*reader.schema()) << "\n";
    std::cout << "rows: " << rows << ", columns: " << reader.schema()->num_fields() << ", batches: " << batches
              << std::endl;
  }
  stream.reset();
  channel.close();
}

}  // namespace

// `send --stream`: every batch of the FILEs as one stream, then END; exits once all is released.
int cmd_send_stream(const Options& o) {
  Batches input = batches_of(o.files);
  ChannelOptions options;
  options.receives_tables = false;
  options.receives_streams = false;
  auto ch = open_channel(o, o.listen, options);
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
  auto ch = open_channel(o, !o.connect);
  StreamReaderOptions options;
  options.read_timeout = timeout(o);
  options.validate = o.validate;
  auto reader = StreamReader::accept(*ch, timeout(o), options);
  drain(std::move(reader), *ch, o);
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
  auto reader = subscribe_on(*ch, {}, timeout(o), o.validate);
  drain(std::move(reader), *ch, o);
  return 0;
}

}  // namespace arrow_shm::cli
