// Shared by the stream files (ring.cpp, consumer.cpp, producer.cpp, publication.cpp): constants of
// §12, eventfds, the §12.3 sleep, STREAM_OPEN fields and the walk over a record's IPC messages.
#pragma once

#include <fcntl.h>
#include <poll.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <arrow/ipc/message.h>

#include "arrow_shm/stream.hpp"
#include "channel_internal.hpp"
#include "ipc_internal.hpp"

namespace arrow_shm::detail {

constexpr int kRingSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
// Longest single sleep: a wake-up lost to a peer without atomics (Python) costs latency only.
constexpr int kSleepBoundMs = 50;
// STREAM_OPEN's own keys: not user metadata.
constexpr const char* kOpenKeys[] = {"stream_id", "reader_slot", "start_position", "capacity"};
bool is_open_key(const std::string& key);

Error ring_invalid(const std::string& m);
// A poll timeout: the deadline's, at most kSleepBoundMs.
int sleep_ms(const Deadline& d);

Fd make_eventfd();
void eventfd_drain(int fd);
// ERR_SEGMENT_INVALID unless `fd` is an eventfd; `what` names it ("data", "space").
void check_eventfd(int fd, const char* what);
// A received eventfd we write: never block on it, even if the peer made it blocking.
void make_nonblocking(int fd);

// §12.3, the waiter's half: set `flag`, re-check `ready`, sleep on `eventfd` and `sockets`
// (at most kSleepBoundMs), drain the eventfd, clear the flag. True when a socket is readable.
bool sleep_on(std::atomic_ref<uint32_t> flag, int eventfd, const std::vector<int>& sockets,
              const std::function<bool()>& ready, const Deadline& d);

// Busy-polls `ready` for up to `micros` µs (the optional spin before a sleep, §12.3).
template <typename Ready>
bool spin_until(uint64_t micros, Ready&& ready) {
  if (micros == 0) return false;
  const auto until = Clock::now() + std::chrono::microseconds(micros);
  for (;;) {
    for (int i = 0; i < 64; i++) {
      if (ready()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (Clock::now() >= until) return false;
  }
}

// A decimal u64 field of a frame, or ERR_PROTOCOL naming `frame_name`.
uint64_t decimal(const Frame& f, const std::string& key, const char* frame_name);

// One encapsulated message of a byte range and where it lies in it.
struct Span {
  std::unique_ptr<arrow::ipc::Message> message;
  int64_t start, end;
};
// Walks the encapsulated messages of `bytes` (§7) without copying: each body is a slice of
// `bytes`. Stops at an end-of-stream marker if `eos_ends`, else refuses it. A peer's bytes go
// through `checker` first (§14.1); null for this side's own.
std::vector<Span> read_messages(const std::shared_ptr<arrow::Buffer>& bytes, bool eos_ends, IpcChecker* checker);

}  // namespace arrow_shm::detail
