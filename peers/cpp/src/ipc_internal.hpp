// Shared by the library, the CLI and the tests: Arrow status -> typed error, batch validation.
#pragma once

#include <string>

#include <arrow/record_batch.h>
#include <arrow/result.h>
#include <arrow/status.h>

#include "arrow_shm.hpp"

namespace arrow_shm {

// ERR_IPC_TRUNCATED / ERR_IPC_INVALID / ERR_IPC_UNSUPPORTED / ERR_TOO_LARGE for a failed Arrow call.
Error ipc_error(const arrow::Status& st);
// The checks of `validate` on a decoded batch (Arrow's ValidateFull(), on a view with strings as
// binary for Bounds), tolerant of the value rules Arrow's own integration files break.
void validate_batch(const arrow::RecordBatch& batch, Validate validate = Validate::Bounds);

inline void check(const arrow::Status& st) {
  if (!st.ok()) throw ipc_error(st);
}

template <typename T>
T unwrap(arrow::Result<T> r) {
  if (!r.ok()) throw ipc_error(r.status());
  return std::move(r).ValueOrDie();
}

// "name: type, ..." of a schema (the `schema:` line of a summary).
std::string schema_line(const arrow::Schema& schema);

}  // namespace arrow_shm
