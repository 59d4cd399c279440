// A stream's per-schema RecordBatch writer (docs/PROTOCOL.md §12.2; the C++ twin of
// src/stream/encoder.ts): the schema is fixed for the life of a stream, so the flatbuffer Message
// is a template laid out once, and each batch only patches its length, field nodes and buffer
// regions, writing message and body straight into the ring slot. The bytes are an encapsulated
// message like Arrow's writer's (continuation, size, flatbuffer, zero padding, body buffers at
// 64-byte boundaries); only the flatbuffer's internal layout differs (the same as Node's).
#include <cstring>

#include <arrow/array/data.h>
#include <arrow/type.h>

#include "bytes.hpp"
#include "internal.hpp"

namespace arrow_shm::detail {

namespace {

constexpr int16_t kMetadataV5 = 4;
constexpr uint8_t kHeaderRecordBatch = 3;
constexpr int64_t kAlign = 64;
int64_t align(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The template's fixed offsets (inside the flatbuffer; every i64 8-byte aligned, structs too):
// 0 root -> Message table at 24 (vtable at 8), RecordBatch table at 64 (vtable at 48),
// nodes vector length at 92 (elements at 96), buffers vector length at kNodes + 16 n + 4.
constexpr int64_t kMessageTable = 24, kBatchTable = 64, kNodes = 96;
constexpr int64_t kBodyLengthAt = kMessageTable + 8, kLengthAt = kBatchTable + 8;

// The Message flatbuffer of a batch with `nodes` field nodes and `buffers` buffers, values zero.
std::vector<uint8_t> message_template(int64_t nodes, int64_t buffers) {
  const int64_t buffers_at = kNodes + 16 * nodes;  // 8-aligned: the vector's length sits just before it, at +4
  std::vector<uint8_t> t(static_cast<size_t>(buffers_at + 8 + 16 * buffers));
  uint8_t* p = t.data();
  store<uint32_t>(p, kMessageTable);
  // Message vtable: size, table size, then field offsets: version, header_type, header, bodyLength.
  const uint16_t message_vtable[] = {12, 24, 16, 18, 4, 8};
  std::memcpy(p + 8, message_vtable, sizeof message_vtable);
  store<int32_t>(p + kMessageTable, kMessageTable - 8);
  store<uint32_t>(p + kMessageTable + 4, kBatchTable - (kMessageTable + 4));
  store<int16_t>(p + kMessageTable + 16, kMetadataV5);
  store<uint8_t>(p + kMessageTable + 18, kHeaderRecordBatch);
  // RecordBatch vtable: length, nodes, buffers.
  const uint16_t batch_vtable[] = {10, 24, 8, 4, 16};
  std::memcpy(p + 48, batch_vtable, sizeof batch_vtable);
  store<int32_t>(p + kBatchTable, kBatchTable - 48);
  store<uint32_t>(p + kBatchTable + 4, static_cast<uint32_t>(kNodes - 4 - (kBatchTable + 4)));
  store<uint32_t>(p + kBatchTable + 16, static_cast<uint32_t>(buffers_at + 4 - (kBatchTable + 16)));
  store<uint32_t>(p + kNodes - 4, static_cast<uint32_t>(nodes));
  store<uint32_t>(p + buffers_at + 4, static_cast<uint32_t>(buffers));
  return t;
}

int64_t bitmap_bytes(int64_t length) { return length / 8 + (length % 8 != 0); }

}  // namespace

ColumnKind column_kind(const arrow::DataType& type) {
  using arrow::Type;
  switch (type.id()) {
    case Type::BOOL: return {ColumnKind::Bool, 0};
    case Type::INT8: case Type::UINT8: case Type::INT16: case Type::UINT16: case Type::HALF_FLOAT:
    case Type::INT32: case Type::UINT32: case Type::FLOAT: case Type::DATE32: case Type::TIME32:
    case Type::INT64: case Type::UINT64: case Type::DOUBLE: case Type::DATE64: case Type::TIME64:
    case Type::TIMESTAMP: case Type::DURATION: case Type::DECIMAL128: case Type::DECIMAL256:
    case Type::FIXED_SIZE_BINARY: {
      const int64_t width = static_cast<const arrow::FixedWidthType&>(type).byte_width();
      return width > 0 ? ColumnKind{ColumnKind::Flat, width} : ColumnKind{};
    }
    case Type::BINARY: case Type::STRING: return {ColumnKind::Variable, 4};
    case Type::LARGE_BINARY: case Type::LARGE_STRING: return {ColumnKind::Variable, 8};
    default: return {};
  }
}

std::unique_ptr<BatchEncoder> BatchEncoder::make(const arrow::Schema& schema) {
  auto e = std::unique_ptr<BatchEncoder>(new BatchEncoder());
  int64_t buffers = 0;
  for (const auto& f : schema.fields()) {
    const ColumnKind kind = column_kind(*f->type());
    if (kind.kind == ColumnKind::None) return nullptr;
    e->kinds_.push_back(kind);
    buffers += kind.buffers();
  }
  const auto fields = static_cast<int64_t>(e->kinds_.size());
  e->template_ = message_template(fields, buffers);
  e->buffers_at_ = kNodes + 16 * fields + 8;
  // The message prefix (continuation, size) and the flatbuffer end at a 64-byte boundary.
  e->body_start_ = align(8 + static_cast<int64_t>(e->template_.size()));
  e->nodes_.reserve(static_cast<size_t>(2 * fields));
  e->buffers_.reserve(static_cast<size_t>(buffers));
  return e;
}

int64_t BatchEncoder::measure(const arrow::RecordBatch& batch) {
  const int64_t length = batch.num_rows();
  if (batch.num_columns() != static_cast<int>(kinds_.size()) || length > INT32_MAX) return -1;
  nodes_.clear();
  buffers_.clear();
  // A buffer of at least `size` bytes, or false.
  auto push = [&](const std::shared_ptr<arrow::Buffer>& b, int64_t size) {
    if (size == 0) {
      buffers_.push_back({nullptr, 0});
      return true;
    }
    if (!b || b->size() < size || !b->is_cpu()) return false;
    buffers_.push_back({b->data(), size});
    return true;
  };
  for (size_t i = 0; i < kinds_.size(); i++) {
    const arrow::ArrayData& d = *batch.column_data(static_cast<int>(i));
    if (d.offset != 0 || d.length != length || d.buffers.size() != static_cast<size_t>(kinds_[i].buffers())) return -1;
    const int64_t nulls = d.GetNullCount();
    nodes_.push_back(length);
    nodes_.push_back(nulls);
    if (!push(d.buffers[0], nulls > 0 ? bitmap_bytes(length) : 0)) return -1;
    const ColumnKind kind = kinds_[i];
    if (kind.kind == ColumnKind::Bool) {
      if (!push(d.buffers[1], bitmap_bytes(length))) return -1;
    } else if (kind.kind == ColumnKind::Flat) {
      if (!push(d.buffers[1], length * kind.width)) return -1;
    } else {
      const auto& offsets = d.buffers[1];
      const int64_t offsets_size = (length + 1) * kind.width;
      if (!offsets || offsets->size() < offsets_size || !offsets->is_cpu()) return -1;
      const uint8_t* o = offsets->data();
      const int64_t first = kind.width == 4 ? load<int32_t>(o) : load<int64_t>(o);
      const int64_t end = kind.width == 4 ? load<int32_t>(o + 4 * length) : load<int64_t>(o + 8 * length);
      if (first != 0 || end < 0) return -1;  // Arrow's writer rebases them; we leave it that
      if (!push(offsets, offsets_size) || !push(d.buffers[2], end)) return -1;
    }
  }
  int64_t body = 0;
  for (const Region& b : buffers_) body = align(body + b.size);
  length_ = length;
  body_length_ = body;
  return body_start_ + body;
}

void BatchEncoder::write(uint8_t* to) const {
  store<uint32_t>(to, 0xffffffffu);
  store<int32_t>(to + 4, static_cast<int32_t>(body_start_ - 8));
  uint8_t* fb = to + 8;
  std::memcpy(fb, template_.data(), template_.size());
  std::memset(fb + template_.size(), 0, static_cast<size_t>(body_start_ - 8) - template_.size());
  store<int64_t>(fb + kBodyLengthAt, body_length_);
  store<int64_t>(fb + kLengthAt, length_);
  std::memcpy(fb + kNodes, nodes_.data(), 8 * nodes_.size());
  uint8_t* body = to + body_start_;
  uint8_t* region = fb + buffers_at_;
  int64_t offset = 0;
  for (const Region& b : buffers_) {
    store<int64_t>(region, offset);
    store<int64_t>(region + 8, b.size);
    region += 16;
    if (b.size) std::memcpy(body + offset, b.data, static_cast<size_t>(b.size));
    const int64_t end = offset + b.size;
    offset = align(end);
    std::memset(body + end, 0, static_cast<size_t>(offset - end));
  }
}

}  // namespace arrow_shm::detail
