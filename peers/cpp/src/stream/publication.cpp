// Publish / subscribe (docs/PROTOCOL.md §12.4): one ring, subscribers admitted between writes.
#include <algorithm>
#include <cerrno>

#include "internal.hpp"

namespace arrow_shm {

Publication::Publication(const std::string& address, std::shared_ptr<arrow::Schema> schema, StreamWriterOptions options)
    : address_(address),
      producer_(std::make_unique<RingProducer>(std::move(schema), std::move(options), kMaxRingReaders)),
      listener_(std::make_unique<Listener>(address)) {}

// Accepts one connection waiting (up to `timeout_ms`) and attaches it on its SUBSCRIBE.
bool Publication::admit(int timeout_ms) {
  if (!listener_) return false;
  pollfd p{listener_->native_handle(), POLLIN, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r <= 0) return false;
  std::unique_ptr<Channel> accepted;
  try {
    accepted = listener_->accept(std::chrono::seconds(5));
  } catch (const Error& e) {
    if (e.code() == "ERR_SYSCALL") throw;
    return true;  // a bad or vanished connector: it got its ERROR, the publication goes on
  }
  Channel& channel = *accepted;
  channels_.push_back(std::move(accepted));
  channel.accepts_subscribe_ = true;
  const Deadline d = Clock::now() + std::chrono::seconds(5);
  try {
    while (channel.subscribe_requests_.empty()) {
      auto frame = channel.read_frame(d);
      if (!frame || !channel.handle_other(*frame)) throw Error("ERR_PEER_CLOSED", "the subscriber left");
    }
  } catch (const Error&) {
    channel.close();
    return true;
  }
  const Frame request = channel.subscribe_requests_.front();
  channel.subscribe_requests_.pop_front();
  try {
    producer_->attach(channel, request.message_id);
  } catch (const Error& e) {
    if (e.code() == "ERR_SYSCALL") throw;
    channel.send_error(e, request.message_id);
    channel.close();
  }
  return true;
}

size_t Publication::subscribers() {
  producer_->forget_departed();
  // Channels the producer no longer references can go.
  channels_.erase(std::remove_if(channels_.begin(), channels_.end(), [](auto& c) { return c->peer_gone(); }),
                  channels_.end());
  return producer_->readers();
}

void Publication::wait_for_subscribers(size_t count, Timeout timeout) {
  const Deadline d = deadline_of(timeout);
  while (subscribers() < count) {
    if (closed_) throw Error("ERR_CLOSED", "the publication is closed");
    if (d && Clock::now() >= *d)
      throw Error("ERR_TIMEOUT", "fewer than " + std::to_string(count) + " subscribers within " +
                                     std::to_string(timeout->count()) + " ms");
    admit(d ? std::min(poll_timeout_ms(d), 100) : 100);
  }
}

void Publication::write(const arrow::RecordBatch& batch) {
  if (closed_) throw Error("ERR_CLOSED", "the publication is closed");
  while (admit(0)) {
  }
  subscribers();
  producer_->write(batch);
}

void Publication::close(Timeout timeout) {
  if (closed_) return;
  listener_.reset();  // no more joiners
  try {
    producer_->end(timeout);
  } catch (...) {
    abort();
    throw;
  }
  abort();
}

void Publication::abort() {
  closed_ = true;
  listener_.reset();
  producer_->close();
  for (auto& channel : channels_) channel->close();
  channels_.clear();
}

}  // namespace arrow_shm