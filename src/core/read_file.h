#pragma once
// Whole-file reads for small inputs (tokenizer models, text documents): the counterpart of write_text_atomic.
#include <string>

namespace cepe {

// The bytes of the regular file `path`; a cepe::Error "<path>: not a regular file | cannot open | cannot read"
// otherwise.
std::string read_file(const std::string& path);

}  // namespace cepe
