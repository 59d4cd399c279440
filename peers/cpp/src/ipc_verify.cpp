// Pre-decode checks of Arrow IPC metadata (PROTOCOL §7, §14.1): a bounds-checked walk of every
// Message flatbuffer that counts each *reference* (a flatbuffer may point many offsets at one
// string, vector or table, and Arrow C++ would decode each of them), and the counts a RecordBatch
// must have for the stream's schema. Arrow C++ only sees messages that passed. Raw offsets, no
// generated headers: Message.fbs and Schema.fbs field numbers are spelled out where they are read.
#include "arrow_shm.hpp"
#include "bytes.hpp"

#include <cstring>

namespace arrow_shm {

namespace {

Error invalid(const std::string& what) { return Error("ERR_IPC_INVALID", "invalid IPC metadata: " + what); }
Error over(const char* limit, uint64_t value) {
  return Error(kErrIpcLimit, "IPC metadata over " + std::string(limit) + " (" + std::to_string(value) + ")");
}

// Schema.fbs `Type` union and Message.fbs `MessageHeader` union members.
enum TypeId : uint8_t {
  kNull = 1, kInt, kFloatingPoint, kBinary, kUtf8, kBool, kDecimal, kDate, kTime, kTimestamp, kInterval,
  kList, kStruct, kUnion, kFixedSizeBinary, kFixedSizeList, kMap, kDuration, kLargeBinary, kLargeUtf8,
  kLargeList, kRunEndEncoded, kBinaryView, kUtf8View, kListView, kLargeListView
};
enum HeaderType : uint8_t { kSchema = 1, kDictionaryBatch, kRecordBatch };
constexpr int16_t kMetadataV4 = 3;  // MetadataVersion enum: V1 = 0 ... V5 = 4
constexpr uint64_t kMaxTables = 1'000'000;

// One Message flatbuffer. Depth as in the Node verifier (src/ipc/verify.ts): the Message is 0,
// each table one more than the table that points at it (a nested type's children: one level).
class Walker {
 public:
  Walker(const uint8_t* p, size_t n, const IpcLimits& limits) : p_(p), n_(n), limits_(limits) {}

  struct Table {
    size_t pos = 0, vt = 0;
    uint16_t fields = 0, size = 0;
  };

  Table root() { return table(target(0, "root offset"), 0, "Message"); }

  Table table(size_t t, uint32_t depth, const char* what) {
    if (depth > limits_.max_nesting_depth) throw over("max_nesting_depth", depth);
    if (++tables_ > kMaxTables) throw over("1,000,000 tables", tables_);
    need(t, 4, what);
    const int64_t vt = static_cast<int64_t>(t) - load<int32_t>(p_ + t);
    if (vt < 0) throw invalid(std::string(what) + " vtable before the buffer");
    need(static_cast<size_t>(vt), 4, what);
    Table r{t, static_cast<size_t>(vt), load<uint16_t>(p_ + vt), load<uint16_t>(p_ + vt + 2)};
    if (r.fields < 4 || r.fields % 2) throw invalid(std::string(what) + " vtable size " + std::to_string(r.fields));
    need(r.vt, r.fields, what);
    need(t, r.size, what);
    r.fields = static_cast<uint16_t>((r.fields - 4) / 2);
    for (uint16_t i = 0; i < r.fields; i++) {
      const uint16_t fo = load<uint16_t>(p_ + r.vt + 4 + 2 * i);
      if (fo != 0 && (fo < 4 || fo >= r.size)) throw invalid(std::string(what) + " field outside its table");
    }
    return r;
  }

  // Absolute position of field `i`, or 0 when absent.
  size_t field(const Table& t, int i, size_t width) const {
    if (i >= t.fields) return 0;
    const uint16_t fo = load<uint16_t>(p_ + t.vt + 4 + 2 * i);
    if (fo == 0) return 0;
    if (fo + width > t.size) throw invalid("a field overruns its table");
    return t.pos + fo;
  }
  template <typename T>
  T scalar(const Table& t, int i, T otherwise = 0) const {
    const size_t at = field(t, i, sizeof(T));
    return at ? load<T>(p_ + at) : otherwise;
  }
  // Where the offset field `i` points, or 0 when absent.
  size_t offset(const Table& t, int i, const char* what) {
    const size_t at = field(t, i, 4);
    return at ? target(at, what) : 0;
  }
  // A vector (or string) at `v`: checked, its bytes counted against max_metadata_bytes; its length.
  uint32_t vector(size_t v, size_t element, const char* what, size_t terminator = 0) {
    const uint64_t count = load<uint32_t>(p_ + v);
    const uint64_t bytes = count * element;
    if (bytes + terminator > n_ - v - 4) throw invalid(std::string(what) + " of " + std::to_string(count) + " elements overruns the metadata");
    count_bytes(bytes);
    return static_cast<uint32_t>(count);
  }
  uint32_t vector_field(const Table& t, int i, size_t element, const char* what) {
    const size_t v = offset(t, i, what);
    return v ? vector(v, element, what) : 0;
  }
  void string(const Table& t, int i, const char* what) {
    if (size_t v = offset(t, i, what)) vector(v, 1, what, 1);
  }
  // A vector of tables: calls each(table position) for every element.
  template <typename F>
  uint32_t tables(const Table& t, int i, const char* what, F&& each) {
    const size_t v = offset(t, i, what);
    if (!v) return 0;
    const uint32_t n = vector(v, 4, what);
    for (uint32_t k = 0; k < n; k++) each(target(v + 4 + 4 * size_t{k}, what));
    return n;
  }
  // KeyValue entries (custom_metadata of a Message, Schema or Field), each counted.
  void key_values(const Table& t, int i, uint32_t depth) {
    tables(t, i, "custom_metadata", [&](size_t kv) {
      if (++entries_ > limits_.max_metadata_entries) throw over("max_metadata_entries", entries_);
      Table e = table(kv, depth + 1, "KeyValue");
      string(e, 0, "key");
      string(e, 1, "value");
    });
  }
  void count_field() {
    if (++fields_ > limits_.max_fields) throw over("max_fields", fields_);
  }
  const uint8_t* at(size_t pos) const { return p_ + pos; }

 private:
  void need(size_t pos, size_t size, const char* what) const {
    if (pos > n_ || size > n_ - pos) throw invalid(std::string(what) + " outside the " + std::to_string(n_) + "-byte metadata");
  }
  size_t target(size_t pos, const char* what) const {
    need(pos, 4, what);
    const size_t t = pos + load<uint32_t>(p_ + pos);
    need(t, 4, what);
    return t;
  }
  void count_bytes(uint64_t bytes) {
    bytes_ += bytes;
    if (bytes_ > limits_.max_metadata_bytes) throw over("max_metadata_bytes", bytes_);
  }

  const uint8_t* p_;
  size_t n_;
  const IpcLimits& limits_;
  uint64_t tables_ = 0, bytes_ = 0, entries_ = 0, fields_ = 0;
};

using Layout = IpcChecker::Layout;

Layout& operator+=(Layout& a, const Layout& b) {
  a.nodes += b.nodes;
  a.buffers += b.buffers;
  a.unions += b.unions;
  a.views += b.views;
  return a;
}

// The Field at `t`: walked, its dictionaries recorded in `dictionaries` (id -> value layout);
// returns what a RecordBatch holds for it (§14.1: a dictionary-encoded field is its index).
Layout walk_field(Walker& w, size_t t, uint32_t depth, std::map<int64_t, Layout>& dictionaries) {
  w.count_field();
  Walker::Table f = w.table(t, depth, "Field");
  w.string(f, 0, "Field.name");
  const uint8_t type = w.scalar<uint8_t>(f, 2);
  const size_t type_table = w.offset(f, 3, "Field.type");
  if (type == 0 || !type_table) throw invalid("a Field without a type");
  Layout own{1, 0, 0, 0};
  {
    Walker::Table ty = w.table(type_table, depth + 1, "Field.type");
    switch (type) {
      case kNull: case kRunEndEncoded: break;
      case kStruct: case kFixedSizeList: own.buffers = 1; break;
      case kInt: case kFloatingPoint: case kBool: case kDecimal: case kDate: case kTime: case kInterval:
      case kDuration: case kFixedSizeBinary: case kList: case kLargeList: case kMap:
        own.buffers = 2;
        break;
      case kTimestamp:
        own.buffers = 2;
        w.string(ty, 1, "Timestamp.timezone");
        break;
      case kBinary: case kUtf8: case kLargeBinary: case kLargeUtf8: case kListView: case kLargeListView:
        own.buffers = 3;
        break;
      case kBinaryView: case kUtf8View: own.buffers = 2, own.views = 1; break;
      case kUnion:
        own.buffers = w.scalar<int16_t>(ty, 0) == 1 ? 2 : 1;  // Dense : Sparse
        own.unions = 1;
        w.vector_field(ty, 1, 4, "Union.typeIds");
        break;
      default:
        throw Error("ERR_IPC_UNSUPPORTED", "a Field of unknown type " + std::to_string(type));
    }
  }
  std::optional<int64_t> dictionary_id;
  if (size_t d = w.offset(f, 4, "Field.dictionary")) {
    Walker::Table enc = w.table(d, depth + 1, "DictionaryEncoding");
    dictionary_id = w.scalar<int64_t>(enc, 0);
    if (size_t index = w.offset(enc, 1, "DictionaryEncoding.indexType")) w.table(index, depth + 2, "Int");
  }
  Layout value = own;
  w.tables(f, 5, "Field.children", [&](size_t child) { value += walk_field(w, child, depth + 1, dictionaries); });
  w.key_values(f, 6, depth);
  if (!dictionary_id) return value;
  dictionaries.emplace(*dictionary_id, value);  // a shared dictionary keeps its first field's layout
  return Layout{1, 2, 0, 0};
}

// A RecordBatch table against the layout its schema fixes (§14.1), O(1) per count.
void walk_record_batch(Walker& w, const Walker::Table& rb, uint32_t depth, const Layout& want, int16_t version) {
  const uint32_t nodes = w.vector_field(rb, 1, 16, "RecordBatch.nodes");
  const uint32_t buffers = w.vector_field(rb, 2, 16, "RecordBatch.buffers");
  if (size_t c = w.offset(rb, 3, "RecordBatch.compression")) w.table(c, depth + 1, "BodyCompression");
  const size_t variadic = w.offset(rb, 4, "RecordBatch.variadicBufferCounts");
  const uint32_t views = variadic ? w.vector(variadic, 8, "RecordBatch.variadicBufferCounts") : 0;
  if (nodes != want.nodes)
    throw invalid("a RecordBatch with " + std::to_string(nodes) + " field nodes, its schema has " + std::to_string(want.nodes));
  if (views != want.views)
    throw invalid("a RecordBatch with " + std::to_string(views) + " variadic buffer counts, its schema has " +
                  std::to_string(want.views) + " view fields");
  uint64_t expected = want.buffers + (version <= kMetadataV4 ? want.unions : 0);
  for (uint32_t k = 0; k < views; k++) {
    const int64_t extra = load<int64_t>(w.at(variadic + 4 + 8 * size_t{k}));
    if (extra < 0 || static_cast<uint64_t>(extra) > buffers) throw invalid("a variadic buffer count of " + std::to_string(extra));
    expected += static_cast<uint64_t>(extra);
  }
  if (buffers != expected)
    throw invalid("a RecordBatch with " + std::to_string(buffers) + " buffers, its schema has " + std::to_string(expected));
}

}  // namespace

// One Message flatbuffer: walked and counted (ERR_IPC_LIMIT / ERR_IPC_INVALID); returns its body length.
int64_t IpcChecker::check_message(const uint8_t* metadata, size_t length) {
  Walker w(metadata, length, limits_);
  Walker::Table m = w.root();
  const int16_t version = w.scalar<int16_t>(m, 0);
  const uint8_t header_type = w.scalar<uint8_t>(m, 1);
  const size_t header = w.offset(m, 2, "Message.header");
  const int64_t body = w.scalar<int64_t>(m, 3);
  w.key_values(m, 4, 0);
  if (!header) throw invalid("a Message without a header");
  Walker::Table h = w.table(header, 1, "Message.header");
  switch (header_type) {
    case kSchema: {
      if (have_schema_) throw invalid("a second Schema message in one stream");
      Layout batch;
      std::map<int64_t, Layout> dictionaries;
      w.tables(h, 1, "Schema.fields", [&](size_t f) { batch += walk_field(w, f, 2, dictionaries); });
      w.key_values(h, 2, 1);
      w.vector_field(h, 3, 8, "Schema.features");
      have_schema_ = true;
      batch_ = batch;
      dictionaries_ = std::move(dictionaries);
      break;
    }
    case kDictionaryBatch: {
      if (!have_schema_) throw invalid("a DictionaryBatch before the Schema");
      const int64_t id = w.scalar<int64_t>(h, 0);
      auto d = dictionaries_.find(id);
      if (d == dictionaries_.end()) throw invalid("a DictionaryBatch of unknown id " + std::to_string(id));
      const size_t data = w.offset(h, 1, "DictionaryBatch.data");
      if (!data) throw invalid("a DictionaryBatch without data");
      walk_record_batch(w, w.table(data, 2, "RecordBatch"), 2, d->second, version);
      break;
    }
    case kRecordBatch:
      if (!have_schema_) throw invalid("a RecordBatch before the Schema");
      walk_record_batch(w, h, 1, batch_, version);
      break;
    default:
      throw invalid("a message of header type " + std::to_string(header_type) + " in a stream");
  }
  if (body < 0) throw invalid("a negative body length");
  return body;
}

// The encapsulated messages (§7): 0xFFFFFFFF, int32 metadata length (or the pre-0.15 form without
// the marker), metadata, body. Stops at an end-of-stream marker (returns the offset after it) or
// at the end of the range.
uint64_t IpcChecker::check_messages(const uint8_t* data, uint64_t length) {
  uint64_t pos = 0;
  while (pos < length) {
    auto truncated = [&](const std::string& what) {
      return Error("ERR_IPC_TRUNCATED", "the IPC stream ends inside " + what + " at offset " + std::to_string(pos));
    };
    if (length - pos < 4) throw truncated("a message length");
    uint64_t prefix = 4;
    int32_t meta = load<int32_t>(data + pos);
    if (meta == -1) {  // the continuation marker
      if (length - pos < 8) throw truncated("a message length");
      meta = load<int32_t>(data + pos + 4);
      prefix = 8;
    }
    if (meta == 0) return pos + prefix;
    if (meta < 0) throw invalid("a negative metadata length");
    if (static_cast<uint64_t>(meta) > length - pos - prefix) throw truncated("message metadata");
    const int64_t body = check_message(data + pos + prefix, static_cast<size_t>(meta));
    pos += prefix + static_cast<uint64_t>(meta);
    if (static_cast<uint64_t>(body) > length - pos) throw truncated("a message body");
    pos += static_cast<uint64_t>(body);
  }
  return pos;
}

}  // namespace arrow_shm
