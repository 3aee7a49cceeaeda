#include "cepe/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/atomic_file.h"
#include "core/json_file.h"
#include "core/safetensors_writer.h"
#include "core/mapped_file.h"

namespace cepe {

// Tensor bytes are mapped and written as-is, and safetensors data is little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // no real checkpoint comes close

// A non-negative JSON integer (nlohmann stores those as unsigned; floats such as 2.0 are refused).
bool as_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) { *out = v.get<uint64_t>(); return true; }
  if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x < 0) return false;
    *out = static_cast<uint64_t>(x);
    return true;
  }
  return false;
}

std::string range_str(size_t begin, size_t end) {
  std::string s = "[";  // built step by step: `"[" + std::to_string(..)` trips a GCC 12 -Wrestrict false positive
  s += std::to_string(begin);
  s += ", ";
  s += std::to_string(end);
  s += ")";
  return s;
}

// The shared reader rejects duplicate keys (a file that means different things to different readers) and
// deep nesting.
json parse_header(const std::string& path, const char* begin, const char* end) {
  json header = parse_json(std::string_view(begin, static_cast<size_t>(end - begin)), path + ": header");
  if (!header.is_object()) {
    throw Error(path + ": header is not a JSON object (it is " + std::string(header.type_name()) + ")");
  }
  return header;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& m) {
  if (!m.is_object()) {
    throw Error(path + ": __metadata__ is not an object of strings (it is " + std::string(m.type_name()) + ")");
  }
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) {
      throw Error(path + ": __metadata__ is not an object of strings: value of '" + k + "' is " +
                  std::string(v.type_name()));
    }
    out[k] = v.get<std::string>();
  }
  return out;
}

// Validates one tensor entry against a data section of `data_size` bytes.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& e, size_t data_size) {
  const std::string where = path + ": tensor '" + name + "': ";
  if (!e.is_object()) throw Error(where + "entry is not a JSON object (it is " + std::string(e.type_name()) + ")");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!e.contains(key)) throw Error(where + "missing '" + key + "'");
  }

  TensorInfo ti;
  ti.name = name;
  const json& dt = e["dtype"];
  if (!dt.is_string()) throw Error(where + "'dtype' is not a string");
  if (!dtype_from_name(dt.get<std::string>(), &ti.dtype)) {
    throw Error(where + "unknown or unsupported dtype '" + dt.get<std::string>() + "'");
  }

  const json& sh = e["shape"];
  if (!sh.is_array()) throw Error(where + "'shape' is not an array");
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < sh.size(); ++i) {
    uint64_t d = 0;
    if (!as_u64(sh[i], &d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw Error(where + "shape dimension " + std::to_string(i) + " is " + json_excerpt(sh[i]) +
                  ", not a non-negative integer");
    }
    ti.shape.push_back(static_cast<int64_t>(d));
    overflow = overflow || __builtin_mul_overflow(numel, d, &numel);
  }
  uint64_t nbytes = 0;
  overflow = overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
             __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(ti.dtype)), &nbytes);
  if (overflow) throw Error(where + "shape " + shape_str(ti.shape) + " overflows the byte count");

  const json& off = e["data_offsets"];
  uint64_t begin = 0, end = 0;
  if (!off.is_array() || off.size() != 2 || !as_u64(off[0], &begin) || !as_u64(off[1], &end)) {
    throw Error(where + "'data_offsets' must be 2 non-negative integers, got " + json_excerpt(off));
  }
  if (begin > end) throw Error(where + "data_offsets " + json_excerpt(off) + " have begin > end");
  if (end - begin != nbytes) {
    throw Error(where + "byte length mismatch: " + dtype_name(ti.dtype) + " " + shape_str(ti.shape) +
                " expected " + std::to_string(nbytes) + " bytes, found " + std::to_string(end - begin) +
                " (data_offsets " + json_excerpt(off) + ")");
  }
  if (end > data_size) {
    throw Error(where + "data_offsets " + json_excerpt(off) + " end beyond the " + std::to_string(data_size) +
                "-byte data section: file truncated?");
  }
  ti.begin = static_cast<size_t>(begin);
  ti.end = static_cast<size_t>(end);
  return ti;
}

}  // namespace

SafeTensors SafeTensors::open(const std::string& path) {
  SafeTensors st;
  st.path_ = path;
  st.file_ = MappedFile::open(path);
  const uint8_t* bytes = st.file_->data();
  const size_t size = st.file_->size();

  if (size < 8) {
    throw Error(path + ": file is " + std::to_string(size) +
                " bytes, shorter than 8 bytes (the header length): truncated or not a safetensors file");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n == 0) throw Error(path + ": header length is 0");
  if (n > kMaxHeaderBytes) {
    throw Error(path + ": header length " + std::to_string(n) + " is absurd (more than 100 MB): corrupt or not a safetensors file");
  }
  if (n > size - 8) {
    throw Error(path + ": header length " + std::to_string(n) + " is larger than the " +
                std::to_string(size - 8) + " bytes after it: file truncated?");
  }

  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  const json header = parse_header(path, hbegin, hbegin + n);
  const size_t data_size = size - 8 - static_cast<size_t>(n);
  st.data_ = bytes + 8 + n;

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      st.metadata_ = parse_metadata(path, entry);
    } else {
      st.tensors_.emplace(name, parse_entry(path, name, entry, data_size));
    }
  }

  // Overlap check: sort the non-empty ranges by start and compare each with the furthest end so far.
  // Gaps are allowed (other writers align tensors that way); empty tensors cannot overlap anything.
  std::vector<const TensorInfo*> ranges;
  for (const auto& [name, ti] : st.tensors_) {
    if (ti.end > ti.begin) ranges.push_back(&ti);
  }
  std::sort(ranges.begin(), ranges.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->name < b->name;
  });
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo* ti : ranges) {
    if (furthest && ti->begin < furthest->end) {
      throw Error(path + ": tensors '" + furthest->name + "' " + range_str(furthest->begin, furthest->end) +
                  " and '" + ti->name + "' " + range_str(ti->begin, ti->end) + " overlap");
    }
    if (!furthest || ti->end > furthest->end) furthest = ti;
  }
  return st;
}

const TensorInfo& SafeTensors::info(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(path_ + ": no tensor named '" + name + "'");
  return it->second;
}

Tensor SafeTensors::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const uint8_t* p = data_ + ti.begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(ti.dtype) != 0) {
    // Misaligned element access is undefined behaviour; files from the reference writer never need this.
    Tensor t = Tensor::empty(ti.dtype, ti.shape);
    if (ti.end > ti.begin) std::memcpy(t.raw(), p, ti.end - ti.begin);
    return t;
  }
  return Tensor(std::shared_ptr<void>(file_), const_cast<uint8_t*>(p), ti.dtype, ti.shape);
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, ti] : tensors_) out.push_back(name);
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    check(t.defined(), path + ": tensor '" + name + "' is undefined");
    check(t.is_contiguous(), path + ": tensor '" + name + "' is not contiguous");
    specs.push_back({name, t.dtype(), t.shape()});
  }
  // One layout for both writers (see safetensors_writer.h): the same tensors give the same bytes.
  const SafeTensorsLayout lay = plan_safetensors(path, specs, metadata);
  write_file_atomic(path, [&](std::FILE* f) {
    auto put = [&](const void* p, size_t n) {
      if (n && std::fwrite(p, 1, n, f) != n) throw Error(std::string("short write: ") + std::strerror(errno));
    };
    put(lay.header.data(), lay.header.size());
    for (const TensorInfo& ti : lay.order) put(tensors.at(ti.name).raw(), ti.end - ti.begin);
  });
}

}  // namespace cepe
