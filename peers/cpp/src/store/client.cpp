// A client of a table store (PROTOCOL §15). The connection is a Channel that lists only "store":
// its handshake, frame reading and §5.1/§7 receive checks (Channel::accept_table, with the sealed
// policy for held answers) are the channel's; this file adds the STORE frame, the requests and
// the answers.
#include <arrow/table.h>

#include "channel_internal.hpp"
#include "ipc_internal.hpp"
#include "store/internal.hpp"

namespace arrow_shm {

namespace {

// A store answers a waiting get with ERR_TIMEOUT itself; the client gives it this much longer.
constexpr std::chrono::milliseconds kGrace{5000};

// A get's answer holds its version at the store (§15.5) until the last copy of this goes.
struct Hold {
  Hold(std::weak_ptr<StoreLink> l, uint64_t id) : link(std::move(l)), table_id(id) {}
  Hold(const Hold&) = delete;
  Hold& operator=(const Hold&) = delete;
  std::weak_ptr<StoreLink> link;
  uint64_t table_id;
  ~Hold() {
    if (auto l = link.lock()) l->release_hold(table_id);
  }
};

Frame store_request(KV kv) {
  Frame f;
  f.kind = Kind::Store;
  f.metadata = std::move(kv);
  return f;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// StoreLink

void StoreLink::open(const std::string& address, Timeout timeout) {
  const Deadline d = deadline_of(timeout);
  ChannelOptions co;
  co.ipc_limits = options_.ipc_limits;
  co.validate = options_.validate;
  co.max_message_bytes = options_.max_message_bytes;
  co.receives_tables = false;  // tables only come as answers (handled here)
  co.receives_streams = false;
  co.max_inline_bytes = 0;
  channel_ = std::make_unique<Channel>(connect_socket(address, SOCK_SEQPACKET, d), co);
  channel_->capabilities_ = "store";  // it implies accepting held (LEASED) answers, §15.1
  channel_->handshake_as_connector(d);
  if (!channel_->peer_has_capability("store"))
    channel_->fatal(Error("ERR_PROTOCOL", "the listener at " + address +
                                              " is not a table store (its WELCOME does not list 'store')"));
}

uint64_t StoreLink::send_request(Frame f, int fd) {
  if (!is_open()) throw closed_error("");
  f.flags = kRequest;
  f.fd_count = fd >= 0 ? 1 : 0;
  return channel_->send_frame(std::move(f), fd);
}

Error StoreLink::closed_error(const std::string& what) const {
  if (!gone_ || gone_->code() == "ERR_CLOSED")
    return Error("ERR_CLOSED", "the store client is closed");
  if (gone_->code() == "ERR_PEER_CLOSED")
    return Error("ERR_PEER_CLOSED", "the store connection closed" + (what.empty() ? "" : " before " + what) +
                                        ": " + gone_->what());
  return *gone_;
}

StoreLink::Answer StoreLink::await_answer(uint64_t id, Expect expect, const Deadline& d, const std::string& what) {
  waiting_ = Waiting{id, expect, what, false, {}, std::nullopt};
  struct Forget {  // whatever happens, a late answer is handed back
    Waiting& w;
    ~Forget() { w.id = 0; }
  } forget{waiting_};
  while (!waiting_.done)
    if (!pump_one(d, what)) throw closed_error(what);
  if (waiting_.error) throw *waiting_.error;
  return std::move(waiting_.answer);
}

bool StoreLink::pump_one(const Deadline& d, const std::string& what) {
  if (!is_open()) return false;
  std::optional<Channel::Received> r;
  try {
    r = channel_->read_frame(d);
  } catch (const Error& e) {
    if (e.code() == "ERR_TIMEOUT") throw Error("ERR_TIMEOUT", "timed out waiting for " + what);
    end(e);  // a fatal frame (the channel told the store and closed)
    return false;
  }
  if (!r) {
    end(Error("ERR_PEER_CLOSED", "the store hung up"));
    return false;
  }
  try {
    dispatch(*r);
  } catch (const Error& e) {
    end(e);
    return false;
  }
  return is_open();
}

void StoreLink::dispatch(Channel::Received& r) {
  const Frame& f = r.frame;
  if (f.kind != Kind::Table && !r.fds.empty())
    channel_->fatal(Error("ERR_PROTOCOL", "file descriptors attached to a frame that carries none"));
  const bool answers = waiting_.id != 0 && !waiting_.done && (f.flags & kResponse) && f.correlation_id == waiting_.id;
  switch (f.kind) {
    case Kind::Table:
      return take_table(r, answers);
    case Kind::Store:
      if (f.flags & kResponse) {
        if (!answers) return;  // a late answer, or an unwatch's
        if (waiting_.expect != Expect::Kv)
          waiting_.error = Error("ERR_PROTOCOL", "the store answered " + waiting_.what + " without a table");
        waiting_.answer.kv = f.metadata;
        waiting_.done = true;
      } else if (f.flags == 0) {
        push_event(f.correlation_id, f.metadata);
      }
      return;
    case Kind::Error:
      if (f.correlation_id != 0) {
        if (answers) {
          waiting_.error = remote_error(f, "the store failed the request");
          waiting_.done = true;
        }
        return;
      }
      break;  // about the connection: the channel's handling throws it
    case Kind::StreamOpen:
    case Kind::StreamSegment:
    case Kind::Subscribe:
      channel_->fatal(Error("ERR_PROTOCOL", "unexpected stream frame (kind " + std::to_string(static_cast<int>(f.kind)) +
                                                ") on a store connection"));
    default:
      break;
  }
  if (!channel_->handle_other(r)) end(Error("ERR_PEER_CLOSED", "the store said GOODBYE"));
}

// A get's or list's answer: §5.1 with the sealed policy (Channel::accept_table, which sends the
// ERROR that ends a hold on failure). Unasked or late: not mapped, handed back at once.
void StoreLink::take_table(Channel::Received& r, bool answers) {
  const Frame& f = r.frame;
  const bool held = f.flags & kLeased;
  if (!answers || waiting_.expect == Expect::Kv) {
    r.fds.clear();
    if (held) release_hold(f.message_id);
    if (answers) waiting_.error = Error("ERR_PROTOCOL", "the store answered " + waiting_.what + " with a table");
    waiting_.done = waiting_.done || answers;
    return;
  }
  waiting_.done = true;
  try {
    if (waiting_.expect == Expect::Listing && f.ipc_length > options_.max_list_bytes) {
      Error e(kErrResourceLimit, "the store's listing is " + std::to_string(f.ipc_length) + " bytes, over max_list_bytes " +
                                     std::to_string(options_.max_list_bytes));
      r.fds.clear();
      channel_->send_error(e, f.message_id);  // not mapped; ends a hold
      throw e;
    }
    waiting_.answer.table = channel_->accept_table(r, held);
    if (held) waiting_.answer.table->hold = std::make_shared<Hold>(weak_from_this(), f.message_id);
  } catch (const Error& e) {
    if (!channel_->is_open()) throw;
    waiting_.error = e;
  }
}

void StoreLink::push_event(uint64_t watch, const KV& kv) {
  auto it = watches_.find(watch);
  if (it == watches_.end() || it->second.ended) return;
  WatchQueue& q = it->second;
  try {
    if (q.events.size() >= options_.max_queued_events)
      throw Error(kErrResourceLimit, std::to_string(q.events.size()) + " store events not taken (max_queued_events " +
                                         std::to_string(options_.max_queued_events) + ")");
    q.events.push_back(store_event(kv));
  } catch (const Error& e) {
    end_watch(q, e);
    unwatch(watch);
  }
}

void StoreLink::end_watch(WatchQueue& q, std::optional<Error> error) {
  if (q.ended) return;
  q.ended = true;
  q.error = std::move(error);
}

std::optional<StoreEvent> StoreLink::next_event(uint64_t id, const Deadline& d) {
  for (;;) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return std::nullopt;
    WatchQueue& q = it->second;
    if (!q.events.empty()) {
      StoreEvent e = std::move(q.events.front());
      q.events.pop_front();
      return e;
    }
    if (q.ended) {
      if (q.error) throw *q.error;
      return std::nullopt;
    }
    if (!pump_one(d, "a store event")) {
      // The connection ended: a close() here ends the watches cleanly, anything else with its error.
      const bool clean = !gone_ || gone_->code() == "ERR_CLOSED";
      for (auto& [wid, wq] : watches_) end_watch(wq, clean ? std::nullopt : std::optional(closed_error("")));
    }
  }
}

void StoreLink::unwatch(uint64_t id) {
  auto it = watches_.find(id);
  if (it == watches_.end()) return;
  it->second.ended = true;
  if (!is_open()) return;
  Frame f = store_request({{"op", "unwatch"}, {"watch", std::to_string(id)}});
  f.flags = kRequest;
  try {
    channel_->send_control(std::move(f));  // its answer is ignored: nobody waits
  } catch (const Error&) {
  }
}

void StoreLink::release_hold(uint64_t table_id) {
  if (!is_open()) return;
  Frame f;
  f.kind = Kind::Release;
  f.correlation_id = table_id;
  try {
    channel_->send_control(std::move(f));
  } catch (const Error&) {
  }
}

void StoreLink::end(const Error& e) {
  if (!gone_) gone_ = e;
  if (channel_ && channel_->fd_) channel_->fd_.reset();  // the channel told the store already if it could
}

void StoreLink::close() {
  if (channel_) channel_->close();
  if (!gone_) gone_ = Error("ERR_CLOSED", "the store client is closed");
  for (auto& [id, q] : watches_) end_watch(q, std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// StoreClient

std::unique_ptr<StoreClient> StoreClient::open(const std::string& address, Timeout timeout,
                                               StoreClientOptions options) {
  if (options.max_queued_events == 0 || options.max_list_entries == 0 || options.max_list_bytes == 0)
    throw Error("ERR_INVALID_ARGUMENT", "max_queued_events, max_list_entries and max_list_bytes must be positive");
  auto link = std::make_shared<StoreLink>(options);
  link->open(address, timeout);
  return std::make_unique<StoreClient>(std::move(link));
}

bool StoreClient::is_open() const { return link_->is_open(); }

void StoreClient::close() { link_->close(); }

PutResult StoreClient::put(const std::string& name, const arrow::Table& table, const PutOptions& options) {
  return put(name, stream_from_table(table, /*max_inline=*/0), options);
}

PutResult StoreClient::put(const std::string& name, const std::vector<uint8_t>& ipc, const PutOptions& options) {
  return put(name, stream_from_file_bytes(ipc, 0, /*seal=*/true, /*max_inline=*/0), options);
}

PutResult StoreClient::put(const std::string& name, OutgoingStream stream, const PutOptions& options) {
  Frame f;
  f.kind = Kind::Table;
  f.metadata = put_metadata(name, options.metadata, options.replace);
  if (stream.is_inline()) throw Error("ERR_INVALID_ARGUMENT", "a put carries a sealed segment, not an inline stream");
  if (stream.length > link_->peer_max_message_bytes())
    throw Error("ERR_TOO_LARGE", std::to_string(stream.length) + "-byte table exceeds the store's max_message_bytes " +
                                     std::to_string(link_->peer_max_message_bytes()));
  f.ipc_length = stream.length;
  const uint64_t id = link_->send_request(std::move(f), stream.segment.get());
  stream.segment.reset();  // the store has its own fd now
  return put_result(link_->await_answer(id, StoreLink::Expect::Kv, std::nullopt, "the put of " + name).kv);
}

ReceivedTable StoreClient::get(const std::string& name, Timeout wait) {
  check_name(name);
  const int64_t ms = wait ? static_cast<int64_t>(wait->count()) : 0;
  if (ms < 0 || ms > kMaxStoreTimeoutMs)
    throw Error("ERR_INVALID_ARGUMENT",
                "a get waits 0 to " + std::to_string(kMaxStoreTimeoutMs) + " ms, not " + std::to_string(ms));
  KV kv{{"op", "get"}, {"name", name}};
  Deadline d;
  if (ms > 0) {
    kv.emplace_back("timeout_ms", std::to_string(ms));
    d = Clock::now() + std::chrono::milliseconds(ms) + kGrace;
  }
  auto answer = link_->request(store_request(std::move(kv)), StoreLink::Expect::Table, "the get of " + name, d);
  return std::move(*answer.table);
}

std::vector<StoreEntry> StoreClient::list(const std::string& prefix) {
  KV kv{{"op", "list"}};
  if (!check_prefix(prefix).empty()) kv.emplace_back("prefix", prefix);
  // Expect::Listing bounds its bytes before mapping; its rows are bounded before conversion.
  auto answer = link_->request(store_request(std::move(kv)), StoreLink::Expect::Listing, "a listing");
  ReceivedTable m = std::move(*answer.table);
  const auto& o = link_->options();
  if (m.info.unsupported)
    throw Error("ERR_PROTOCOL", std::string("the store's listing cannot be decoded: ") + m.info.unsupported->what());
  if (static_cast<uint64_t>(m.info.rows) > o.max_list_entries)
    throw Error(kErrResourceLimit, "the store's listing has " + std::to_string(m.info.rows) + " rows, over max_list_entries " +
                                       std::to_string(o.max_list_entries));
  auto table = m.table();
  // Read as strings: every check, UTF-8 included (the listing is small).
  arrow::TableBatchReader batches(*table);
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    check(batches.ReadNext(&batch));
    if (!batch) break;
    validate_batch(*batch, Validate::Full);
  }
  return list_entries(*table);
}

uint64_t StoreClient::remove(const std::string& name) {
  KV kv{{"op", "delete"}, {"name", check_name(name)}};
  auto answer = link_->request(store_request(std::move(kv)), StoreLink::Expect::Kv, "the delete of " + name);
  return store_decimal(answer.kv, "version");
}

StoreStats StoreClient::stats() {
  return store_stats(link_->request(store_request({{"op", "stats"}}), StoreLink::Expect::Kv, "stats").kv);
}

std::unique_ptr<StoreWatch> StoreClient::watch(const std::string& prefix) {
  KV kv{{"op", "watch"}};
  if (!check_prefix(prefix).empty()) kv.emplace_back("prefix", prefix);
  const uint64_t id = link_->send_request(store_request(std::move(kv)));
  link_->add_watch(id);  // before any event of it can be read
  try {
    link_->await_answer(id, StoreLink::Expect::Kv, std::nullopt, "a watch");
  } catch (...) {
    link_->drop_watch(id);  // refused: nothing to unwatch
    throw;
  }
  return std::make_unique<StoreWatch>(link_, id);
}

// ---------------------------------------------------------------------------------------------
// StoreWatch

std::optional<StoreEvent> StoreWatch::next(Timeout timeout) {
  if (!link_) return std::nullopt;
  return link_->next_event(id_, deadline_of(timeout));
}

void StoreWatch::close() {
  if (!link_) return;
  link_->unwatch(id_);
  link_->drop_watch(id_);
  link_.reset();
}

}  // namespace arrow_shm
