#pragma once
// The one JSON reader every loader uses (config.json, shard indexes, safetensors headers, requests). JSON comes
// from strangers, so it enforces what nlohmann does not:
//  - a nesting limit (nlohmann's dump(), copies and our walkers recurse: 100,000 levels overflow the stack);
//  - no duplicate keys (otherwise the last one silently wins, and two readers may disagree on what a file says);
//  - errors that name the origin and the field ("config.json: field 'rope_scaling.factor': ..."), quote at most
//    a short excerpt, and never carry nlohmann's exception codes;
//  - a size limit on files, and for large numeric arrays a streaming reader that never builds a DOM (a DOM costs
//    ~4x the text in memory, and nlohmann's destructor allocates, so running out of memory inside it aborts).
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace cepe {

// Deeper than any real config, header or request (those are 5 levels at most), shallow enough for recursion.
constexpr size_t kJsonMaxDepth = 64;
// Larger than any real config.json or shard index (a 7B index is ~30 KB).
constexpr size_t kJsonMaxFileBytes = 64ull << 20;

// Parses `text`; errors start with `origin` (a file name, or e.g. "request").
nlohmann::json parse_json(std::string_view text, const std::string& origin, size_t max_depth = kJsonMaxDepth);

// Reads and parses a JSON file of at most `max_bytes`; errors name the file ("<path>: cannot open <what>").
nlohmann::json read_json_file(const std::string& path, const std::string& what,
                              size_t max_bytes = kJsonMaxFileBytes);

// A short, one-line rendering of `v` for error messages: at most about `max_chars` characters, "..." when cut.
// Never recurses deeper than kJsonMaxDepth.
std::string json_excerpt(const nlohmann::json& v, size_t max_chars = 48);

// --- Streaming reader for request-like files: one JSON object whose fields are rectangular arrays of numbers
// (flattened as they stream by: 8 bytes a value) or small scalars.

struct JsonFieldSpec {
  enum class Kind { Integers, Numbers, Scalar };
  std::string name;
  Kind kind = Kind::Integers;
  int rank = 0;  // array rank for Integers/Numbers; 0 for Scalar
};

struct JsonField {
  std::vector<int64_t> shape;    // arrays: one entry per rank
  std::vector<int64_t> ints;     // Kind::Integers, row-major
  std::vector<double> numbers;   // Kind::Numbers, row-major
  nlohmann::json scalar;         // Kind::Scalar (a string, number, boolean or null)
};

// Reads a JSON object from `path` whose keys must all be in `specs`; a field absent from the file is absent from
// the result. Errors name the file and the field: unknown fields, wrong rank, ragged or empty dimensions,
// non-integers where integers are expected, arrays where a scalar is expected, out-of-range numbers, duplicates,
// files over `max_bytes`, and running out of memory.
std::map<std::string, JsonField> read_json_fields(const std::string& path, const std::string& what,
                                                  const std::vector<JsonFieldSpec>& specs,
                                                  size_t max_bytes = size_t{4} << 30);

}  // namespace cepe
