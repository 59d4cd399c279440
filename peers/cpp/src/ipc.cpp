// Arrow IPC: validation of received streams (zero copy) and re-framing of ARROW1 files (§5.2, §7).
#include "arrow_shm.hpp"

#include <cstring>
#include <functional>

#include <arrow/array.h>
#include <arrow/buffer.h>
#include <arrow/extension_type.h>
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

// `t` seen through a zero-copy view of the same layout: with `binary`, utf8 / large_utf8 /
// string_view (nested ones too) as binary / large_binary / binary_view, so that full validation
// checks every offset and view but skips the O(bytes) UTF-8 scan; with `storage`, the value-ruled
// types (dates, times, decimals) as their physical storage.
std::shared_ptr<arrow::DataType> view_type(const std::shared_ptr<arrow::DataType>& t, bool binary, bool storage) {
  using arrow::Type;
  auto field = [&](const std::shared_ptr<arrow::Field>& f) { return f->WithType(view_type(f->type(), binary, storage)); };
  auto fields = [&] {
    arrow::FieldVector out;
    for (auto& f : t->fields()) out.push_back(field(f));
    return out;
  };
  switch (t->id()) {
    case Type::STRING: return binary ? arrow::binary() : t;
    case Type::LARGE_STRING: return binary ? arrow::large_binary() : t;
    case Type::STRING_VIEW: return binary ? arrow::binary_view() : t;
    case Type::DATE64:
    case Type::TIME64: return storage ? arrow::int64() : t;
    case Type::DATE32:
    case Type::TIME32: return storage ? arrow::int32() : t;
    case Type::DECIMAL32:
    case Type::DECIMAL64:
    case Type::DECIMAL128:
    case Type::DECIMAL256:
      return storage ? arrow::fixed_size_binary(static_cast<const arrow::FixedWidthType&>(*t).byte_width()) : t;
    case Type::LIST: return arrow::list(field(static_cast<const arrow::ListType&>(*t).value_field()));
    case Type::LARGE_LIST: return arrow::large_list(field(static_cast<const arrow::LargeListType&>(*t).value_field()));
    case Type::LIST_VIEW: return arrow::list_view(field(static_cast<const arrow::ListViewType&>(*t).value_field()));
    case Type::LARGE_LIST_VIEW:
      return arrow::large_list_view(field(static_cast<const arrow::LargeListViewType&>(*t).value_field()));
    case Type::FIXED_SIZE_LIST: {
      auto& l = static_cast<const arrow::FixedSizeListType&>(*t);
      return arrow::fixed_size_list(field(l.value_field()), l.list_size());
    }
    case Type::MAP: {
      auto& m = static_cast<const arrow::MapType&>(*t);
      return std::make_shared<arrow::MapType>(field(m.key_field()), field(m.item_field()), m.keys_sorted());
    }
    case Type::STRUCT: return arrow::struct_(fields());
    case Type::SPARSE_UNION: return arrow::sparse_union(fields(), static_cast<const arrow::UnionType&>(*t).type_codes());
    case Type::DENSE_UNION: return arrow::dense_union(fields(), static_cast<const arrow::UnionType&>(*t).type_codes());
    case Type::DICTIONARY: {
      auto& d = static_cast<const arrow::DictionaryType&>(*t);
      return arrow::dictionary(d.index_type(), view_type(d.value_type(), binary, storage), d.ordered());
    }
    case Type::RUN_END_ENCODED: {
      auto& r = static_cast<const arrow::RunEndEncodedType&>(*t);
      return arrow::run_end_encoded(r.run_end_type(), view_type(r.value_type(), binary, storage));
    }
    case Type::EXTENSION: {  // seen as its storage only when that changes
      const auto& inner = static_cast<const arrow::ExtensionType&>(*t).storage_type();
      auto viewed = view_type(inner, binary, storage);
      return viewed->Equals(*inner) ? t : viewed;
    }
    default: return t;
  }
}

// ValidateFull() of `column` seen as `type` (a zero-copy view when it differs).
arrow::Status validate_as(const std::shared_ptr<arrow::Array>& column, const std::shared_ptr<arrow::DataType>& type) {
  if (type->Equals(*column->type())) return column->ValidateFull();
  auto viewed = column->View(type);
  if (!viewed.ok()) return viewed.status();
  return (*viewed)->ValidateFull();
}

}  // namespace

std::string schema_line(const arrow::Schema& schema) {
  std::string out;
  for (int i = 0; i < schema.num_fields(); i++)
    out += (i ? ", " : "") + schema.field(i)->name() + ": " + schema.field(i)->type()->ToString();
  return out;
}

Validate parse_validate(const std::string& name) {
  for (Validate v : {Validate::Bounds, Validate::Full, Validate::Framing})
    if (name == validate_name(v)) return v;
  throw Error("ERR_INVALID_ARGUMENT", "validate must be one of bounds, full, framing; got '" + name + "'");
}

const char* validate_name(Validate v) {
  switch (v) {
    case Validate::Full: return "full";
    case Validate::Framing: return "framing";
    default: return "bounds";
  }
}

// The one home of the validation policy (§7, Validate). Bounds: ValidateFull on each column seen
// with its strings as binary; Full: ValidateFull as it is. Either way a column failing only a value
// rule is validated again as its storage type, so every memory-safety check still runs.
void validate_batch(const arrow::RecordBatch& batch, Validate validate) {
  if (validate == Validate::Framing) return;
  check(batch.Validate());  // the shape: every column as long as the batch, types as the schema
  const bool binary = validate == Validate::Bounds;
  for (int i = 0; i < batch.num_columns(); i++) {
    const auto& column = batch.column(i);
    arrow::Status st = validate_as(column, view_type(column->type(), binary, false));
    if (st.ok()) continue;
    auto storage = view_type(column->type(), binary, true);
    if (!is_value_rule(st) || storage->Equals(*view_type(column->type(), binary, false))) check(st);
    auto viewed = column->View(storage);
    if (!viewed.ok()) check(st);
    check((*viewed)->ValidateFull());
  }
}

namespace {

// `length` bytes written by `fill` (called once with where they go): in memory when they may go
// inline, else in a new segment.
OutgoingStream make_outgoing(uint64_t length, uint64_t max_inline, uint64_t min_size, bool seal,
                             const std::function<void(uint8_t*, uint64_t)>& fill) {
  OutgoingStream out;
  out.length = length;
  if (length > 0 && length <= max_inline) {
    out.bytes.resize(length);
    fill(out.bytes.data(), length);
  } else {
    out.segment = make_segment(length, min_size, seal, fill);
  }
  return out;
}

// Writes schema + batches as an IPC stream (buffers 64-byte aligned): sized first with a mock
// stream, then written in place where it goes (a segment's mapping: no extra copy).
OutgoingStream write_stream(const std::shared_ptr<arrow::Schema>& schema,
                            const std::vector<std::shared_ptr<arrow::RecordBatch>>& batches, uint64_t min_size,
                            bool seal, uint64_t max_inline) {
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
  return make_outgoing(length, max_inline, min_size, seal, [&](uint8_t* p, uint64_t n) {
    auto target = std::make_shared<arrow::MutableBuffer>(p, static_cast<int64_t>(n));
    arrow::io::FixedSizeBufferWriter sink(target);
    write(&sink);
    if (static_cast<uint64_t>(unwrap(sink.Tell())) != n)
      throw Error("ERR_INVALID_ARGUMENT", "IPC stream size changed while writing");
    check(sink.Close());
  });
}

}  // namespace

StreamInfo validate_stream(const uint8_t* data, uint64_t length, const IpcLimits& limits, Validate validate) {
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
      validate_batch(*batch, validate);
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

OutgoingStream stream_from_file_bytes(const std::vector<uint8_t>& bytes, uint64_t min_size, bool seal,
                                      uint64_t max_inline) {
  if (bytes.size() < 6 || std::memcmp(bytes.data(), "ARROW1", 6) != 0) {
    // An IPC stream: copied byte for byte.
    return make_outgoing(bytes.size(), max_inline, min_size, seal,
                         [&](uint8_t* p, uint64_t n) { std::memcpy(p, bytes.data(), n); });
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
  return write_stream(file->schema(), batches, min_size, seal, max_inline);
}

OutgoingStream stream_from_table(const arrow::Table& table, uint64_t max_inline) {
  arrow::TableBatchReader reader(table);
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    check(reader.ReadNext(&batch));
    if (!batch) break;
    batches.push_back(std::move(batch));
  }
  return write_stream(table.schema(), batches, 0, /*seal=*/true, max_inline);
}

std::shared_ptr<arrow::Table> decode_table(const std::shared_ptr<arrow::Buffer>& ipc) {
  // BufferReader hands out slices of `ipc` (no copy): every column keeps `ipc` alive.
  auto input = std::make_shared<arrow::io::BufferReader>(ipc);
  auto reader = unwrap(arrow::ipc::RecordBatchStreamReader::Open(input, arrow::ipc::IpcReadOptions::Defaults()));
  return unwrap(reader->ToTable());
}

}  // namespace arrow_shm
