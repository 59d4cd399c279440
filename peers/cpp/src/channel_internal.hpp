// Shared by channel.cpp and the stream files: a Timeout as a Deadline, a peer's ERROR as an Error.
#pragma once

#include "arrow_shm/channel.hpp"

namespace arrow_shm {

inline Deadline deadline_of(Timeout t) {
  if (!t) return std::nullopt;
  return Clock::now() + *t;
}

inline Error remote_error(const Frame& f, const char* fallback) {
  return Error(f.get("code").value_or("ERR_REMOTE"), f.get("message").value_or(fallback));
}

}  // namespace arrow_shm
