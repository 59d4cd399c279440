// Arrow IPC: validation of received streams (zero copy) and re-framing of ARROW1 files (§5.2, §7).
#include "arrow_shm.hpp"

#include <cstring>

#include <arrow/array.h>
#include <arrow/buffer.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/options.h>
#include <arrow/ipc/reader.h>
#include <arrow/ipc/writer.h>
#include <arrow/record_batch.h>
#include <arrow/status.h>
#include <arrow/table.h>
#include <arrow/type.h>

#include "ipc_internal.hpp"

namespace arrow_shm {

Error ipc_error(const arrow::Status& st) {
  const std::string msg = st.message();
  if (st.IsNotImplemented()) return Error("ERR_IPC_UNSUPPORTED", msg);
  if (st.IsCapacityError() || st.IsOutOfMemory()) return Error("ERR_TOO_LARGE", msg);
  for (const char* needle : {"xpected to read", "xpected to be able to read", "truncated", "Truncated", "too short"}) {
    if (msg.find(needle) != std::string::npos) return Error("ERR_IPC_TRUNCATED", msg);
  }
  return Error("ERR_IPC_INVALID", msg.empty() ? st.ToString() : msg);
}

namespace {

// Arrow C++'s full validation also enforces value rules (date64 whole days, time-of-day range,
// decimal precision) that Arrow's own integration files break and that are harmless to read.
constexpr const char* kValueRules[] = {"whole number of days", "acceptable range", "does not fit in precision"};

bool is_value_rule(const arrow::Status& st) {
  for (const char* rule : kValueRules)
    if (st.message().find(rule) != std::string::npos) return true;
  return false;
}

// The same layout with the value-ruled logical types replaced by their physical storage.
std::shared_ptr<arrow::DataType> storage_type(const std::shared_ptr<arrow::DataType>& t) {
  using arrow::Type;
  auto field = [](const std::shared_ptr<arrow::Field>& f) { return f->WithType(storage_type(f->type())); };
  switch (t->id()) {
    case Type::DATE64: return arrow::int64();
    case Type::DATE32: return arrow::int32();
    case Type::TIME32: return arrow::int32();
    case Type::TIME64: return arrow::int64();
    case Type::DECIMAL32:
    case Type::DECIMAL64:
    case Type::DECIMAL128:
    case Type::DECIMAL256:
      return arrow::fixed_size_binary(static_cast<const arrow::FixedWidthType&>(*t).byte_width());
    case Type::LIST: return arrow::list(field(static_cast<const arrow::ListType&>(*t).value_field()));
    case Type::LARGE_LIST: return arrow::large_list(field(static_cast<const arrow::LargeListType&>(*t).value_field()));
    case Type::FIXED_SIZE_LIST: {
      auto& l = static_cast<const arrow::FixedSizeListType&>(*t);
      return arrow::fixed_size_list(field(l.value_field()), l.list_size());
    }
    case Type::MAP: {
      auto& m = static_cast<const arrow::MapType&>(*t);
      return std::make_shared<arrow::MapType>(field(m.key_field()), field(m.item_field()), m.keys_sorted());
    }
    case Type::STRUCT: {
      arrow::FieldVector fields;
      for (auto& f : t->fields()) fields.push_back(field(f));
      return arrow::struct_(fields);
    }
    case Type::DICTIONARY: {
      auto& d = static_cast<const arrow::DictionaryType&>(*t);
      return arrow::dictionary(d.index_type(), storage_type(d.value_type()), d.ordered());
    }
    default: return t;
  }
}

}  // namespace

// ValidateFull(), where a value-rule failure is retried on a zero-copy view of the column as its
// storage type, so every memory-safety check (offsets, lengths, indices) still runs.
std::string schema_line(const arrow::Schema& schema) {
  std::string out;
  for (int i = 0; i < schema.num_fields(); i++)
    out += (i ? ", " : "") + schema.field(i)->name() + ": " + schema.field(i)->type()->ToString();
  return out;
}

void validate_batch(const arrow::RecordBatch& batch) {
  arrow::Status st = batch.ValidateFull();
  if (st.ok()) return;
  if (!is_value_rule(st)) check(st);
  for (int i = 0; i < batch.num_columns(); i++) {
    auto column = batch.column(i);
    arrow::Status cs = column->ValidateFull();
    if (cs.ok()) continue;
    auto storage = storage_type(column->type());
    if (!is_value_rule(cs) || storage->Equals(*column->type())) check(cs);
    auto viewed = column->View(storage);
    if (!viewed.ok()) check(st);
    check((*viewed)->ValidateFull());
  }
}

namespace {

// Writes schema + batches as an IPC stream (buffers 64-byte aligned) into a new segment:
// sized first with a mock stream, then written in place into the mapping (no extra copy).
std::pair<Fd, uint64_t> write_segment(const std::shared_ptr<arrow::Schema>& schema,
                                      const std::vector<std::shared_ptr<arrow::RecordBatch>>& batches,
                                      uint64_t min_size, bool seal) {
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.alignment = 64;
  auto write = [&](arrow::io::OutputStream* sink) {
    auto writer = unwrap(arrow::ipc::MakeStreamWriter(sink, schema, options));
    for (auto& b : batches) check(writer->WriteRecordBatch(*b));
    check(writer->Close());
  };
  arrow::io::MockOutputStream mock;
  write(&mock);
  const uint64_t length = static_cast<uint64_t>(unwrap(mock.Tell()));
  Fd fd = make_segment(length, min_size, seal, [&](uint8_t* p, uint64_t n) {
    auto target = std::make_shared<arrow::MutableBuffer>(p, static_cast<int64_t>(n));
    arrow::io::FixedSizeBufferWriter sink(target);
    write(&sink);
    if (static_cast<uint64_t>(unwrap(sink.Tell())) != n)
      throw Error("ERR_INVALID_ARGUMENT", "IPC stream size changed while writing");
    check(sink.Close());
  });
  return {std::move(fd), length};
}

}  // namespace

StreamInfo validate_stream(const uint8_t* data, uint64_t length, const IpcLimits& limits) {
  StreamInfo info;
  // Non-owning buffer over the (read-only) mapping: every decoded column points into it.
  auto buffer = std::make_shared<arrow::Buffer>(data, static_cast<int64_t>(length));
  auto input = std::make_shared<arrow::io::BufferReader>(buffer);
  try {
    IpcChecker(limits).check_messages(data, length);  // before Arrow C++ decodes any of it
    auto reader = unwrap(arrow::ipc::RecordBatchStreamReader::Open(input, arrow::ipc::IpcReadOptions::Defaults()));
    info.schema = schema_line(*reader->schema());
    info.num_columns = reader->schema()->num_fields();
    for (;;) {
      std::shared_ptr<arrow::RecordBatch> batch;
      check(reader->ReadNext(&batch));
      if (!batch) break;
      validate_batch(*batch);
      info.rows += batch->num_rows();
      info.batches += 1;
    }
    info.end = static_cast<uint64_t>(unwrap(input->Tell()));
  } catch (const Error& e) {
    if (e.code() != "ERR_IPC_UNSUPPORTED") throw;
    info.unsupported = e;
    info.end = length;
  }
  return info;
}

std::pair<Fd, uint64_t> segment_from_file_bytes(const std::vector<uint8_t>& bytes, uint64_t min_size, bool seal) {
  if (bytes.size() < 6 || std::memcmp(bytes.data(), "ARROW1", 6) != 0) {
    // An IPC stream: copied byte for byte.
    Fd fd = make_segment(bytes.size(), min_size, seal,
                         [&](uint8_t* p, uint64_t n) { std::memcpy(p, bytes.data(), n); });
    return {std::move(fd), bytes.size()};
  }
  // An IPC file: its batches (and dictionaries) re-framed as a stream, buffers 64-byte aligned.
  auto file = unwrap(arrow::ipc::RecordBatchFileReader::Open(
      std::make_shared<arrow::io::BufferReader>(arrow::Buffer::Wrap(bytes.data(), bytes.size()))));
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  for (int i = 0; i < file->num_record_batches(); i++) {
    auto batch = unwrap(file->ReadRecordBatch(i));
    validate_batch(*batch);
    batches.push_back(std::move(batch));
  }
  return write_segment(file->schema(), batches, min_size, seal);
}

std::pair<Fd, uint64_t> segment_from_table(const arrow::Table& table) {
  arrow::TableBatchReader reader(table);
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    check(reader.ReadNext(&batch));
    if (!batch) break;
    batches.push_back(std::move(batch));
  }
  return write_segment(table.schema(), batches, 0, /*seal=*/true);
}

std::shared_ptr<arrow::Table> decode_table(const std::shared_ptr<arrow::Buffer>& ipc) {
  // BufferReader hands out slices of `ipc` (no copy): every column keeps `ipc` alive.
  auto input = std::make_shared<arrow::io::BufferReader>(ipc);
  auto reader = unwrap(arrow::ipc::RecordBatchStreamReader::Open(input, arrow::ipc::IpcReadOptions::Defaults()));
  return unwrap(reader->ToTable());
}

}  // namespace arrow_shm
