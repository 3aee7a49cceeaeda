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

// The temporary name both atomic writers use: `path.tmp.<pid>`, in the same directory.
std::string temp_path_for(const std::string& path);
// fsyncs the directory holding `path`, so that a rename into it is durable (best effort).
void sync_parent_dir(const std::string& path);

// write_file_atomic for a whole text (or byte) string.
void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace cepe
