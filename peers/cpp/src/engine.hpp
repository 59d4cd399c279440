// The symbol engine of `engine --socket ADDR` (mirrors peers/rust/src/engine.rs).
#pragma once

#include <memory>

#include <arrow/table.h>

namespace arrow_shm {

// Answers a symbol table (id utf8, fqn utf8, kind uint8, file_id uint16, start_line uint32,
// start_col uint16, end_line uint32, end_col uint16) with one row per file_id, then one per kind,
// keys ascending: (group utf8, key uint32, count uint64, min_start_line uint32, max_end_line uint32).
// Throws ERR_INVALID_ARGUMENT for another schema or nulls.
std::shared_ptr<arrow::Table> engine_answer(const arrow::Table& request);

}  // namespace arrow_shm
