// Shared by ipc.cpp and stream.cpp: Arrow status -> typed error, and batch validation.
#pragma once

#include <arrow/record_batch.h>
#include <arrow/status.h>

#include "arrow_shm.hpp"

namespace arrow_shm {

// ERR_IPC_TRUNCATED / ERR_IPC_INVALID / ERR_IPC_UNSUPPORTED / ERR_TOO_LARGE for a failed Arrow call.
Error ipc_error(const arrow::Status& st);
// Arrow's ValidateFull(), tolerant of the value rules Arrow's own integration files break.
void validate_batch(const arrow::RecordBatch& batch);

}  // namespace arrow_shm
