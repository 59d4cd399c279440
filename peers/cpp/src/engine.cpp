// The symbol engine: per-file_id and per-kind summaries, reading the request's columns in place.
#include "engine.hpp"

#include <algorithm>
#include <vector>

#include <arrow/array.h>
#include <arrow/builder.h>

#include "arrow_shm.hpp"

namespace arrow_shm {

namespace {

std::shared_ptr<arrow::Schema> request_schema() {
  return arrow::schema({arrow::field("id", arrow::utf8()), arrow::field("fqn", arrow::utf8()),
                        arrow::field("kind", arrow::uint8()), arrow::field("file_id", arrow::uint16()),
                        arrow::field("start_line", arrow::uint32()), arrow::field("start_col", arrow::uint16()),
                        arrow::field("end_line", arrow::uint32()), arrow::field("end_col", arrow::uint16())});
}

// Nullable fields, as the Rust engine and the Python client agree (there are never nulls).
std::shared_ptr<arrow::Schema> response_schema() {
  return arrow::schema({arrow::field("group", arrow::utf8()), arrow::field("key", arrow::uint32()),
                        arrow::field("count", arrow::uint64()), arrow::field("min_start_line", arrow::uint32()),
                        arrow::field("max_end_line", arrow::uint32())});
}

void check_schema(const arrow::Schema& got) {
  auto want = request_schema();
  bool ok = got.num_fields() == want->num_fields();
  for (int i = 0; ok && i < got.num_fields(); i++)
    ok = got.field(i)->name() == want->field(i)->name() && got.field(i)->type()->Equals(*want->field(i)->type());
  if (ok) return;
  std::string fields;
  for (int i = 0; i < got.num_fields(); i++)
    fields += (i ? ", " : "") + got.field(i)->name() + " " + got.field(i)->type()->ToString();
  throw Error("ERR_INVALID_ARGUMENT",
              "expected a symbol table (id utf8, fqn utf8, kind uint8, file_id uint16, start_line uint32, "
              "start_col uint16, end_line uint32, end_col uint16), got (" + fields + ")");
}

template <typename ArrayType>
const ArrayType& column(const arrow::RecordBatch& batch, const char* name) {
  auto c = batch.GetColumnByName(name);
  if (!c) throw Error("ERR_INVALID_ARGUMENT", std::string("missing column ") + name);
  if (c->null_count() > 0) throw Error("ERR_INVALID_ARGUMENT", std::string("column ") + name + " has nulls");
  return static_cast<const ArrayType&>(*c);  // the type was checked with the schema
}

struct Acc {
  uint64_t count = 0;
  uint32_t min = UINT32_MAX;
  uint32_t max = 0;
};

void ok(const arrow::Status& st) {
  if (!st.ok()) throw Error("ERR_INVALID_ARGUMENT", st.ToString());
}

}  // namespace

std::shared_ptr<arrow::Table> engine_answer(const arrow::Table& request) {
  check_schema(*request.schema());
  std::vector<Acc> files(1 << 16), kinds(1 << 8);
  arrow::TableBatchReader reader(request);
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ok(reader.ReadNext(&batch));
    if (!batch) break;
    auto& kind = column<arrow::UInt8Array>(*batch, "kind");
    auto& file = column<arrow::UInt16Array>(*batch, "file_id");
    auto& start = column<arrow::UInt32Array>(*batch, "start_line");
    auto& end = column<arrow::UInt32Array>(*batch, "end_line");
    for (int64_t i = 0; i < batch->num_rows(); i++) {
      for (Acc* acc : {&files[file.Value(i)], &kinds[kind.Value(i)]}) {
        acc->count++;
        acc->min = std::min(acc->min, start.Value(i));
        acc->max = std::max(acc->max, end.Value(i));
      }
    }
  }
  arrow::StringBuilder group;
  arrow::UInt32Builder key, min_start, max_end;
  arrow::UInt64Builder count;
  for (auto [name, accs] : {std::pair{"file_id", &files}, std::pair{"kind", &kinds}}) {
    for (size_t k = 0; k < accs->size(); k++) {
      const Acc& a = (*accs)[k];
      if (a.count == 0) continue;
      ok(group.Append(name));
      ok(key.Append(static_cast<uint32_t>(k)));
      ok(count.Append(a.count));
      ok(min_start.Append(a.min));
      ok(max_end.Append(a.max));
    }
  }
  std::vector<std::shared_ptr<arrow::Array>> columns(5);
  ok(group.Finish(&columns[0]));
  ok(key.Finish(&columns[1]));
  ok(count.Finish(&columns[2]));
  ok(min_start.Finish(&columns[3]));
  ok(max_end.Finish(&columns[4]));
  return arrow::Table::Make(response_schema(), columns);
}

}  // namespace arrow_shm
