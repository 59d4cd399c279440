// What every C++ test program prints: one PASS/FAIL line per check, and the count of failures
// (the program's exit status), read by peers/cpp/test.sh.
#pragma once

#include <cstdio>
#include <string>

namespace arrow_shm_test {

inline int failures = 0;

inline void report(const std::string& name, bool ok, const std::string& why = "") {
  if (ok) std::printf("PASS: %s\n", name.c_str());
  else std::printf("FAIL: %s: %s\n", name.c_str(), why.c_str());
  if (!ok) failures++;
  std::fflush(stdout);
}

}  // namespace arrow_shm_test
