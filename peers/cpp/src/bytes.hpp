// Little-endian integers at any (unaligned) address: the frames (§3), the ring (§12.2), flatbuffers.
#pragma once

#include <cstdint>
#include <cstring>

namespace arrow_shm {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "arrow-shm wire integers are little-endian");

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace arrow_shm
