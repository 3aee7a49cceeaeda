#pragma once
// Atomic file replacement: readers of `path` see either the old file or the complete new one, never
// a partial write, even if the process dies mid-way.
#include <cstdio>
#include <functional>
#include <string>

namespace cepe {

// Calls `write` with a stream open on `path + ".tmp.<pid>"` (same directory, so the rename cannot
// cross file systems), then flushes, fsyncs and renames it over `path`. On any failure (including
// an exception from `write`) the temporary file is removed and a cepe::Error naming `path` is
// thrown; `path` itself is left untouched.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);

// write_file_atomic for a whole text (or byte) string.
void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace cepe
