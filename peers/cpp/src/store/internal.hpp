// The table store client's insides (PROTOCOL §15): the connection (StoreLink, a Channel that
// lists only "store") and what a client agrees on with a store (protocol.cpp: names, keys,
// decimals, the shapes of the answers). Node: src/store/{link,protocol}.ts; Python: store.py,
// store_protocol.py.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "arrow_shm/store.hpp"

namespace arrow_shm {

// ---- protocol.cpp ----
// The TABLE metadata of a put: the user's keys (none reserved), the name, replace.
KV put_metadata(const std::string& name, const KV& metadata, bool replace);
// A number the store sent (§15.1: at most 19 digits, below 2^63); missing or malformed: ERR_PROTOCOL.
uint64_t store_decimal(const KV& kv, const std::string& key);
PutResult put_result(const KV& kv);
StoreStats store_stats(const KV& kv);
StoreEvent store_event(const KV& kv);  // malformed: ERR_PROTOCOL
// The listing table of §15.3 (validated, UTF-8 included, rows already bounded) as entries;
// another shape, a null or metadata that is not a JSON object of strings: ERR_PROTOCOL.
std::vector<StoreEntry> list_entries(const arrow::Table& table);
// A flat JSON object of strings ({"k": "v", ...}); nullopt if it is anything else.
std::optional<KV> parse_json_object(const std::string& text);

// ---- client.cpp ----
class StoreLink : public std::enable_shared_from_this<StoreLink> {
 public:
  // A request's answer: a STORE frame, a TABLE (get), or a listing (a TABLE of at most
  // max_list_bytes, bounded before it is mapped).
  enum class Expect { Kv, Table, Listing };
  struct Answer {
    KV kv;
    std::optional<ReceivedTable> table;
  };

  explicit StoreLink(StoreClientOptions options) : options_(options) {}
  void open(const std::string& address, Timeout timeout);
  // Sends a REQUEST (with the fd of a put) and returns its message id.
  uint64_t send_request(Frame f, int fd = -1);
  // Handles frames until the answer to request `id` arrives: returns it, or throws its ERROR.
  Answer await_answer(uint64_t id, Expect expect, const Deadline& d, const std::string& what);
  Answer request(Frame f, Expect expect, const std::string& what, const Deadline& d = std::nullopt) {
    return await_answer(send_request(std::move(f)), expect, d, what);
  }
  uint64_t peer_max_message_bytes() const { return channel_->peer_max_message_bytes(); }
  const StoreClientOptions& options() const { return options_; }

  // Watches: `id` is the watch request's message id (registered before its answer is awaited).
  void add_watch(uint64_t id) { watches_[id]; }
  void drop_watch(uint64_t id) { watches_.erase(id); }
  std::optional<StoreEvent> next_event(uint64_t id, const Deadline& d);
  void unwatch(uint64_t id);

  void release_hold(uint64_t table_id);
  void close();
  bool is_open() const { return channel_ && channel_->is_open() && !gone_; }
  // ERR_CLOSED (closed here) or why the connection ended.
  Error closed_error(const std::string& what) const;

 private:
  struct WatchQueue {
    std::deque<StoreEvent> events;
    bool ended = false;
    std::optional<Error> error;  // what ended it, raised once its events are taken
  };
  struct Waiting {
    uint64_t id = 0;  // 0: nothing awaited (a late answer is handed back)
    Expect expect = Expect::Kv;
    std::string what;
    bool done = false;
    Answer answer;
    std::optional<Error> error;
  };
  // Reads and handles one frame (waiting up to `d`); false once the connection has ended.
  bool pump_one(const Deadline& d, const std::string& what);
  void dispatch(Channel::Received& r);
  void take_table(Channel::Received& r, bool answers);  // answers: it is the awaited answer
  void push_event(uint64_t watch, const KV& kv);
  static void end_watch(WatchQueue& q, std::optional<Error> error);
  void end(const Error& e);

  StoreClientOptions options_;
  std::unique_ptr<Channel> channel_;
  Waiting waiting_;
  std::map<uint64_t, WatchQueue> watches_;
  std::optional<Error> gone_;  // why the connection ended (ERR_CLOSED: close() here)
};

}  // namespace arrow_shm
