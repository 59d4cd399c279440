// arrow-shm C++ library: a client of a table store (docs/PROTOCOL.md §15): put, get (zero copy,
// held until released), list, remove, watch, stats over one connection. The Node client
// (src/store/client.ts) and the Python one (arrow_shm/store.py) have the same operations; `delete`
// is a C++ keyword, so it is `remove` here. Single-threaded, like a Channel.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arrow_shm/channel.hpp"

namespace arrow_shm {

// Reserved TABLE metadata keys of a put and of a get's answer (§15.3).
constexpr const char* kStoreNameKey = "arrow-shm.name";
constexpr const char* kStoreReplaceKey = "arrow-shm.replace";
constexpr const char* kStoreVersionKey = "arrow-shm.version";
constexpr size_t kMaxNameBytes = 256;             // §15.6 max_name_bytes (the store's default)
constexpr int64_t kMaxStoreTimeoutMs = 999999999;  // a get's timeout_ms: a decimal of 9 digits

// A name (§15.2): 1 to 256 bytes of A-Z a-z 0-9 . _ - / : = @ +; else ERR_INVALID_ARGUMENT.
const std::string& check_name(const std::string& name);
// A prefix (list, watch): empty, or like a name.
const std::string& check_prefix(const std::string& prefix);

struct StoreClientOptions {
  IpcLimits ipc_limits;                                  // §14.1, for every table received
  Validate validate = Validate::Bounds;                  // checks of a get's table after decoding
  uint64_t max_message_bytes = kDefaultMaxMessageBytes;  // the largest get answer taken
  size_t max_queued_events = 4096;   // events a watch keeps untaken; past it: ERR_RESOURCE_LIMIT
  uint64_t max_list_entries = 1 << 20;  // rows of a listing converted (more: ERR_RESOURCE_LIMIT)
  uint64_t max_list_bytes = 1ull << 30;  // ipc_length of a listing mapped (more: ERR_RESOURCE_LIMIT)
};

struct PutOptions {
  KV metadata;           // user metadata, returned with every get (no `arrow-shm.` keys)
  bool replace = false;  // make a new version if the name exists (else ERR_EXISTS)
};

struct PutResult {
  uint64_t version = 0;
  uint64_t bytes = 0;  // what the store accounts for this version (the segment's size)
  uint64_t rows = 0;
};

// One row of list().
struct StoreEntry {
  std::string name;
  uint64_t version = 0, bytes = 0, ipc_length = 0, rows = 0;
  int64_t created_ms = 0;
  uint32_t holds = 0;  // gets of this version not yet released, all clients
  KV metadata;
};

struct StoreStats {
  uint64_t entries = 0, bytes = 0, held_bytes = 0, memory = 0;
  std::string evict;  // "lru" | "none"
  uint64_t evictions = 0;
};

// A watch event: `event` is "put", "delete" or "evict"; `bytes` only for "put".
struct StoreEvent {
  std::string event;
  std::string name;
  uint64_t version = 0;
  std::optional<uint64_t> bytes;
};

class StoreWatch;

class StoreClient {
 public:
  // Connects to the store at `address` (a path or @name) and completes the handshake (§15.1).
  static std::unique_ptr<StoreClient> open(const std::string& address, Timeout timeout = {},
                                           StoreClientOptions options = {});
  explicit StoreClient(std::shared_ptr<StoreLink> link) : link_(std::move(link)) {}
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;
  ~StoreClient() { close(); }

  // Puts a table (written once into a new sealed segment), the bytes of an IPC stream or file
  // (a file is re-framed as a stream), or a stream already in a sealed segment (no copy) under
  // `name`. ERR_EXISTS if it has a version and not options.replace.
  PutResult put(const std::string& name, const arrow::Table& table, const PutOptions& options = {});
  PutResult put(const std::string& name, const std::vector<uint8_t>& ipc, const PutOptions& options = {});
  PutResult put(const std::string& name, OutgoingStream stream, const PutOptions& options = {});

  // The table under `name`, mapped read-only (zero copy), metadata with arrow-shm.name and
  // arrow-shm.version. The store holds that version until the result's hold goes (close()).
  // `wait` > 0: wait that long for a put of the name (ERR_TIMEOUT); else a miss is ERR_NOT_FOUND.
  ReceivedTable get(const std::string& name, Timeout wait = {});
  // Every name starting with `prefix`, in byte order.
  std::vector<StoreEntry> list(const std::string& prefix = "");
  // Removes `name` (holders keep their version); returns the version removed.
  uint64_t remove(const std::string& name);
  StoreStats stats();
  // Events of every later put, delete and eviction of a name starting with `prefix`; the store
  // has the watch when this returns.
  std::unique_ptr<StoreWatch> watch(const std::string& prefix = "");

  // Sends GOODBYE and closes (idempotent): watches end; tables received stay readable.
  void close();
  bool is_open() const;

 private:
  std::shared_ptr<StoreLink> link_;
};

// The events of one watch. Closing it (or its destructor) tells the store to stop.
class StoreWatch {
 public:
  StoreWatch(std::shared_ptr<StoreLink> link, uint64_t id) : link_(std::move(link)), id_(id) {}
  StoreWatch(const StoreWatch&) = delete;
  StoreWatch& operator=(const StoreWatch&) = delete;
  ~StoreWatch() { close(); }
  // The next event; nullopt once the watch or its client was closed. ERR_TIMEOUT after `timeout`;
  // the error that ended the watch (ERR_RESOURCE_LIMIT, ERR_PEER_CLOSED) once its events are taken.
  std::optional<StoreEvent> next(Timeout timeout = {});
  void close();
  uint64_t id() const { return id_; }

 private:
  std::shared_ptr<StoreLink> link_;
  uint64_t id_;
};

}  // namespace arrow_shm
