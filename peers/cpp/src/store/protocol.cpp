// What a table store client agrees on with the store (PROTOCOL §15): names, reserved keys,
// decimals, and the shapes of its answers (put, list, stats, watch events).
#include <cstring>
#include <string_view>
#include <type_traits>

#include <arrow/array.h>
#include <arrow/chunked_array.h>
#include <arrow/table.h>

#include "channel_internal.hpp"
#include "store/internal.hpp"

namespace arrow_shm {

namespace {

constexpr const char* kReserved = "arrow-shm.";

bool name_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::string_view("._-/:=@+").find(c) != std::string_view::npos;
}

const std::string& check_name_as(const std::string& name, const char* what, bool may_be_empty) {
  if (name.empty() && !may_be_empty)
    throw Error("ERR_INVALID_ARGUMENT", std::string("a ") + what + " must not be empty");
  if (name.size() > kMaxNameBytes)
    throw Error("ERR_INVALID_ARGUMENT", std::string(what) + " of " + std::to_string(name.size()) +
                                            " bytes exceeds max_name_bytes " + std::to_string(kMaxNameBytes));
  for (char c : name)
    if (!name_char(c))
      throw Error("ERR_INVALID_ARGUMENT", std::string(what) + " '" + name.substr(0, 64) +
                                              "' has characters outside A-Z a-z 0-9 . _ - / : = @ +");
  return name;
}

std::optional<std::string> kv_get(const KV& kv, const std::string& key) {
  for (auto& [k, v] : kv)
    if (k == key) return v;
  return std::nullopt;
}

// One column of the listing with its exact type and no nulls, as plain values.
template <typename ArrayType, typename Value>
std::vector<Value> column_values(const arrow::Table& table, const char* name, const arrow::DataType& type) {
  auto column = table.GetColumnByName(name);
  if (!column || !column->type()->Equals(type))
    throw Error("ERR_PROTOCOL", std::string("the store's listing has no ") + type.ToString() + " column " + name);
  if (column->null_count() != 0) throw Error("ERR_PROTOCOL", std::string("the store's listing has a null in ") + name);
  std::vector<Value> out;
  out.reserve(static_cast<size_t>(column->length()));
  for (auto& chunk : column->chunks()) {
    auto& array = static_cast<const ArrayType&>(*chunk);
    for (int64_t i = 0; i < array.length(); i++) {
      if constexpr (std::is_same_v<Value, std::string>) out.emplace_back(array.GetView(i));
      else out.push_back(static_cast<Value>(array.Value(i)));
    }
  }
  return out;
}

// JSON (RFC 8259) string at text[at] == '"': its UTF-8 value, `at` past it; nullopt if malformed.
std::optional<std::string> json_string(const std::string& text, size_t& at) {
  std::string out;
  auto hex4 = [&](size_t p) -> std::optional<uint32_t> {
    if (p + 4 > text.size()) return std::nullopt;
    uint32_t v = 0;
    for (size_t i = p; i < p + 4; i++) {
      const char c = text[i];
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) return std::nullopt;
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  };
  for (at++; at < text.size();) {
    const char c = text[at++];
    if (c == '"') return out;
    if (static_cast<unsigned char>(c) < 0x20) return std::nullopt;
    if (c != '\\') {
      out += c;
      continue;
    }
    if (at >= text.size()) return std::nullopt;
    const char e = text[at++];
    const char* simple = std::strchr("\"\\/bfnrt", e);
    if (simple && e) {
      out += "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      continue;
    }
    if (e != 'u') return std::nullopt;
    auto cp = hex4(at);
    if (!cp) return std::nullopt;
    at += 4;
    if (*cp >= 0xD800 && *cp < 0xDC00) {  // a surrogate pair
      auto low = at + 1 < text.size() && text[at] == '\\' && text[at + 1] == 'u' ? hex4(at + 2) : std::nullopt;
      if (!low || *low < 0xDC00 || *low >= 0xE000) return std::nullopt;
      at += 6;
      *cp = 0x10000 + ((*cp - 0xD800) << 10) + (*low - 0xDC00);
    } else if (*cp >= 0xDC00 && *cp < 0xE000) {
      return std::nullopt;
    }
    if (*cp < 0x80) {
      out += static_cast<char>(*cp);
    } else if (*cp < 0x800) {
      out += static_cast<char>(0xC0 | (*cp >> 6)), out += static_cast<char>(0x80 | (*cp & 0x3F));
    } else if (*cp < 0x10000) {
      out += static_cast<char>(0xE0 | (*cp >> 12)), out += static_cast<char>(0x80 | ((*cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (*cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (*cp >> 18)), out += static_cast<char>(0x80 | ((*cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((*cp >> 6) & 0x3F)), out += static_cast<char>(0x80 | (*cp & 0x3F));
    }
  }
  return std::nullopt;
}

}  // namespace

const std::string& check_name(const std::string& name) { return check_name_as(name, "name", false); }
const std::string& check_prefix(const std::string& prefix) { return check_name_as(prefix, "prefix", true); }

KV put_metadata(const std::string& name, const KV& metadata, bool replace) {
  check_name(name);
  KV kv;
  for (auto& [key, value] : metadata) {
    if (key.rfind(kReserved, 0) == 0)
      throw Error("ERR_INVALID_ARGUMENT", "metadata key '" + key.substr(0, 64) + "' is reserved (arrow-shm.*)");
    kv.emplace_back(key, value);
  }
  kv.emplace_back(kStoreNameKey, name);
  if (replace) kv.emplace_back(kStoreReplaceKey, "1");
  return kv;
}

uint64_t store_decimal(const KV& kv, const std::string& key) {
  const auto text = kv_get(kv, key);
  const auto value = strict_decimal(text, 19);
  if (!value || *value >= (uint64_t{1} << 63))
    throw Error("ERR_PROTOCOL", "the store sent " + key + "='" + text.value_or("(none)").substr(0, 32) +
                                    "', not a decimal of at most 19 digits");
  return *value;
}

PutResult put_result(const KV& kv) {
  return {store_decimal(kv, "version"), store_decimal(kv, "bytes"), store_decimal(kv, "rows")};
}

StoreStats store_stats(const KV& kv) {
  StoreStats s;
  s.evict = kv_get(kv, "evict").value_or("");
  if (s.evict != "lru" && s.evict != "none")
    throw Error("ERR_PROTOCOL", "the store reported evict='" + s.evict.substr(0, 32) + "'");
  s.entries = store_decimal(kv, "entries");
  s.bytes = store_decimal(kv, "bytes");
  s.held_bytes = store_decimal(kv, "held_bytes");
  s.memory = store_decimal(kv, "memory");
  s.evictions = store_decimal(kv, "evictions");
  return s;
}

StoreEvent store_event(const KV& kv) {
  StoreEvent e;
  e.event = kv_get(kv, "event").value_or("");
  auto name = kv_get(kv, "name");
  if ((e.event != "put" && e.event != "delete" && e.event != "evict") || !name)
    throw Error("ERR_PROTOCOL", "malformed store event (event '" + e.event.substr(0, 32) + "')");
  e.name = *name;
  e.version = store_decimal(kv, "version");
  if (kv_get(kv, "bytes")) e.bytes = store_decimal(kv, "bytes");
  return e;
}

std::optional<KV> parse_json_object(const std::string& text) {
  KV out;
  size_t at = 0;
  auto skip = [&] {
    while (at < text.size() && (text[at] == ' ' || text[at] == '\t' || text[at] == '\n' || text[at] == '\r')) at++;
  };
  auto expect = [&](char c) {
    skip();
    if (at >= text.size() || text[at] != c) return false;
    at++;
    return true;
  };
  if (!expect('{')) return std::nullopt;
  skip();
  if (at < text.size() && text[at] == '}') {
    at++;
  } else {
    for (;;) {
      skip();
      if (at >= text.size() || text[at] != '"') return std::nullopt;
      auto key = json_string(text, at);
      if (!key || !expect(':')) return std::nullopt;
      skip();
      if (at >= text.size() || text[at] != '"') return std::nullopt;
      auto value = json_string(text, at);
      if (!value) return std::nullopt;
      out.emplace_back(std::move(*key), std::move(*value));
      if (expect('}')) break;
      if (!expect(',')) return std::nullopt;
    }
  }
  skip();
  if (at != text.size()) return std::nullopt;
  return out;
}

std::vector<StoreEntry> list_entries(const arrow::Table& table) {
  const auto names = column_values<arrow::StringArray, std::string>(table, "name", *arrow::utf8());
  const auto versions = column_values<arrow::UInt64Array, uint64_t>(table, "version", *arrow::uint64());
  const auto bytes = column_values<arrow::UInt64Array, uint64_t>(table, "bytes", *arrow::uint64());
  const auto ipc_lengths = column_values<arrow::UInt64Array, uint64_t>(table, "ipc_length", *arrow::uint64());
  const auto rows = column_values<arrow::UInt64Array, uint64_t>(table, "rows", *arrow::uint64());
  const auto created = column_values<arrow::Int64Array, int64_t>(table, "created_ms", *arrow::int64());
  const auto holds = column_values<arrow::UInt32Array, uint32_t>(table, "holds", *arrow::uint32());
  const auto metadata = column_values<arrow::StringArray, std::string>(table, "metadata", *arrow::utf8());
  std::vector<StoreEntry> out;
  out.reserve(names.size());
  for (size_t i = 0; i < names.size(); i++) {
    auto kv = parse_json_object(metadata[i]);
    if (!kv)
      throw Error("ERR_PROTOCOL", "the store's listing row " + std::to_string(i) +
                                      " has metadata that is not a JSON object of strings");
    out.push_back({names[i], versions[i], bytes[i], ipc_lengths[i], rows[i], created[i], holds[i], std::move(*kv)});
  }
  return out;
}

}  // namespace arrow_shm
