// Shared by channel.cpp, the stream and store files: a Timeout as a Deadline, a peer's ERROR as an
// Error, the decimal rule.
#pragma once

#include "arrow_shm/channel.hpp"

namespace arrow_shm {

inline Deadline deadline_of(Timeout t) {
  if (!t) return std::nullopt;
  return Clock::now() + *t;
}

// A number of the handshake (§4) or of a store (§15.1): "0" or [1-9][0-9]*, at most `digits`
// digits; nullopt otherwise.
std::optional<uint64_t> strict_decimal(const std::optional<std::string>& text, size_t digits = 9);

inline Error remote_error(const Frame& f, const char* fallback) {
  return Error(f.get("code").value_or("ERR_REMOTE"), f.get("message").value_or(fallback));
}

}  // namespace arrow_shm
