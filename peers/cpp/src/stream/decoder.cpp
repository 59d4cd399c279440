// A per-stream decode plan (docs/PROTOCOL.md §12.2; the C++ twin of src/stream/decoder.ts): the
// layout every batch must have is fixed by the schema, so a record holding exactly one RecordBatch
// message -- no compression, no custom metadata, no variadic counts -- is read here with bounds
// checks on every flatbuffer offset, the counts compared with the plan, and its columns made over
// the ring bytes without Arrow's message reader. Anything else, or anything these checks doubt,
// returns null and goes through the generic path (IpcChecker + Arrow's reader + validate_batch),
// which accepts what it accepts and reports errors with its own words.
#include <arrow/array/data.h>
#include <arrow/record_batch.h>
#include <arrow/type.h>
#include <arrow/util/bit_util.h>
#include <arrow/util/bitmap_ops.h>

#include "bytes.hpp"
#include "internal.hpp"

namespace arrow_shm::detail {

namespace {

constexpr uint32_t kContinuation = 0xffffffffu;
constexpr uint8_t kHeaderRecordBatch = 3;
constexpr int16_t kMetadataV4 = 3, kMetadataV5 = 4;

// Flatbuffer reads, each checked against the metadata [0, n); -1 when out of bounds.
struct Flatbuffer {
  const uint8_t* p;
  int64_t n;

  // The position a uoffset at `pos` points to.
  int64_t target(int64_t pos) const {
    if (pos < 0 || pos + 4 > n) return -1;
    const int64_t t = pos + load<uint32_t>(p + pos);
    return t + 4 <= n ? t : -1;
  }
  // The table at `t` if its vtable and every field offset lie inside it and the metadata.
  int64_t table(int64_t t) const {
    if (t < 0 || t + 4 > n) return -1;
    const int64_t vt = t - load<int32_t>(p + t);
    if (vt < 0 || vt + 4 > n) return -1;
    const uint16_t vt_size = load<uint16_t>(p + vt), table_size = load<uint16_t>(p + vt + 2);
    if (vt_size < 4 || vt_size % 2 || vt + vt_size > n || t + table_size > n) return -1;
    for (int64_t at = vt + 4; at < vt + vt_size; at += 2) {
      const uint16_t fo = load<uint16_t>(p + at);
      if (fo != 0 && (fo < 4 || fo >= table_size)) return -1;
    }
    return t;
  }
  // The position of field `i` (of `size` bytes) of a checked table: 0 when absent, -1 when it overruns the table.
  int64_t field(int64_t t, int i, int size) const {
    const int64_t vt = t - load<int32_t>(p + t);
    const int slot = 4 + 2 * i;
    if (slot >= load<uint16_t>(p + vt)) return 0;
    const uint16_t fo = load<uint16_t>(p + vt + slot);
    if (fo == 0) return 0;
    return fo + size > load<uint16_t>(p + vt + 2) ? -1 : t + fo;
  }
  // An i64 field (0 when absent); -1 when negative or out of bounds.
  int64_t i64(int64_t pos) const {
    if (pos == 0) return 0;
    if (pos < 0) return -1;
    const int64_t v = load<int64_t>(p + pos);
    return v < 0 ? -1 : v;
  }
  // The first element of the vector of `count` 16-byte structs the uoffset field at `pos` points to;
  // -1 unless it has exactly that many and they fit.
  int64_t structs(int64_t pos, uint64_t count) const {
    if (pos == 0) return count == 0 ? 0 : -1;
    const int64_t at = target(pos);
    if (at < 0 || load<uint32_t>(p + at) != count || 16 * count > static_cast<uint64_t>(n - at - 4)) return -1;
    return at + 4;
  }
};

bool aligned(const uint8_t* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }

// ValidateFull's checks of offsets (monotonic, within `values` bytes), as Bounds runs them.
template <typename Offset>
bool offsets_valid(const uint8_t* offsets, int64_t length, int64_t values) {
  const auto* o = reinterpret_cast<const Offset*>(offsets);
  if (o[0] < 0) return false;
  for (int64_t k = 0; k < length; k++)
    if (o[k + 1] < o[k]) return false;
  return static_cast<int64_t>(o[length]) <= values;
}

}  // namespace

std::unique_ptr<DecodePlan> DecodePlan::make(const std::shared_ptr<arrow::Schema>& schema, const IpcLimits& limits) {
  if (!schema->is_native_endian()) return nullptr;
  auto plan = std::unique_ptr<DecodePlan>(new DecodePlan());
  plan->schema_ = schema;
  for (const auto& f : schema->fields()) {
    const ColumnKind kind = column_kind(*f->type());
    if (kind.kind == ColumnKind::None) return nullptr;
    plan->kinds_.push_back(kind);
    plan->buffers_ += static_cast<uint64_t>(kind.buffers());
    const auto id = f->type()->id();
    plan->has_strings_ = plan->has_strings_ || id == arrow::Type::STRING || id == arrow::Type::LARGE_STRING;
  }
  // What the checker counts for a batch's two vectors, and the one nested table.
  if (16 * (plan->kinds_.size() + plan->buffers_) > limits.max_metadata_bytes || limits.max_nesting_depth < 1)
    return nullptr;
  return plan;
}

std::shared_ptr<arrow::RecordBatch> DecodePlan::decode(const std::shared_ptr<arrow::Buffer>& bytes, Validate validate) {
  const uint8_t* data = bytes->data();
  const int64_t len = bytes->size();
  if (len < 8 || load<uint32_t>(data) != kContinuation) return nullptr;
  const int32_t size = load<int32_t>(data + 4);
  // Arrow's reader wants the metadata 8-byte aligned, and the body after it.
  if (size <= 0 || size > len - 8 || size % 8 || !aligned(data)) return nullptr;
  const Flatbuffer fb{data + 8, size};
  // Message: version 0, header_type 1, header 2, bodyLength 3, custom_metadata 4.
  const int64_t message = fb.table(fb.target(0));
  if (message < 0) return nullptr;
  const int64_t type = fb.field(message, 1, 1);
  if (type <= 0 || fb.p[type] != kHeaderRecordBatch || fb.field(message, 4, 4) != 0) return nullptr;
  const int64_t version_at = fb.field(message, 0, 2);
  const int16_t version = version_at > 0 ? load<int16_t>(fb.p + version_at) : 0;
  if (version != kMetadataV4 && version != kMetadataV5) return nullptr;
  const int64_t header = fb.field(message, 2, 4);
  const int64_t batch = header > 0 ? fb.table(fb.target(header)) : -1;
  const int64_t body_length = fb.i64(fb.field(message, 3, 8));
  if (batch < 0 || body_length < 0) return nullptr;
  // RecordBatch: length 0, nodes 1, buffers 2, compression 3, variadicBufferCounts 4.
  if (fb.field(batch, 3, 4) != 0 || fb.field(batch, 4, 4) != 0) return nullptr;
  const int64_t length = fb.i64(fb.field(batch, 0, 8));
  const int64_t nodes = fb.structs(fb.field(batch, 1, 4), kinds_.size());
  const int64_t regions = fb.structs(fb.field(batch, 2, 4), buffers_);
  const int64_t body_start = 8 + size;
  if (length < 0 || nodes < 0 || regions < 0 || body_length != len - body_start) return nullptr;
  const bool full = validate != Validate::Framing;  // the O(length) checks of ValidateFull

  std::vector<std::shared_ptr<arrow::ArrayData>> columns(kinds_.size());
  int64_t region = regions;
  // The next buffer region: at least `need` bytes, 8-byte aligned, inside the body; its slice to `out` (if any).
  auto buffer = [&](int64_t need, std::shared_ptr<arrow::Buffer>* out) {
    const int64_t offset = fb.i64(region), n = fb.i64(region + 8);
    region += 16;
    if (offset < 0 || n < 0 || n > body_length - offset || n < need || !aligned(data + body_start + offset)) return false;
    // SliceBuffer's work without its second look-up of the CPU memory manager.
    if (out) *out = std::make_shared<arrow::Buffer>(data + body_start + offset, n, bytes->memory_manager(), bytes);
    return true;
  };
  for (size_t i = 0; i < kinds_.size(); i++) {
    const int64_t n = fb.i64(nodes + 16 * static_cast<int64_t>(i));
    const int64_t nulls = fb.i64(nodes + 16 * static_cast<int64_t>(i) + 8);
    // Columns shorter or longer than the batch: the generic path fails them.
    if (n != length || nulls < 0 || nulls > n) return nullptr;
    const ColumnKind kind = kinds_[i];
    std::vector<std::shared_ptr<arrow::Buffer>> buffers(static_cast<size_t>(kind.buffers()));
    const int64_t bitmap = n / 8 + (n % 8 != 0);
    // As Arrow's reader: no validity buffer without nulls.
    if (!buffer(nulls > 0 ? bitmap : 0, nulls > 0 ? &buffers[0] : nullptr)) return nullptr;
    if (nulls > 0 && full && n - arrow::internal::CountSetBits(buffers[0]->data(), 0, n) != nulls) return nullptr;
    if (kind.kind == ColumnKind::Bool) {
      if (!buffer(bitmap, &buffers[1])) return nullptr;
    } else if (kind.kind == ColumnKind::Flat) {
      if (n > INT64_MAX / kind.width || !buffer(n * kind.width, &buffers[1])) return nullptr;
    } else {
      if (n > INT64_MAX / kind.width - 1 || !buffer((n + 1) * kind.width, &buffers[1]) || !buffer(0, &buffers[2]))
        return nullptr;
      const uint8_t* o = buffers[1]->data();
      const int64_t values = buffers[2]->size();
      if (full ? !(kind.width == 4 ? offsets_valid<int32_t>(o, n, values) : offsets_valid<int64_t>(o, n, values))
               : (kind.width == 4 ? load<int32_t>(o + 4 * n) : load<int64_t>(o + 8 * n)) > values)
        return nullptr;
    }
    columns[i] = arrow::ArrayData::Make(schema_->field(static_cast<int>(i))->type(), n, std::move(buffers), nulls);
  }
  return arrow::RecordBatch::Make(schema_, length, std::move(columns));
}

}  // namespace arrow_shm::detail
