#include "model/random_init.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "cepe/error.h"
#include "core/atomic_file.h"
#include "core/half.h"
#include "core/safetensors_writer.h"
#include "model/weights.h"

namespace cepe {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------
// Tensor list

std::vector<InitTensor> checkpoint_tensors(const CepeConfig& c) {
  std::vector<InitTensor> out;
  for (const TensorEntry& e : model_tensors(c)) {
    // HF _init_weights: Linear and Embedding ~ N(0, initializer_range), biases 0, RMSNorm 1.
    const InitFill fill = e.role == TensorRole::Norm ? InitFill::Ones
                          : e.role == TensorRole::Bias ? InitFill::Zeros
                                                       : InitFill::Normal;
    out.push_back({e.name, e.shape, fill, e.padding_row});
  }
  return out;
}

int64_t parameter_count(const CepeConfig& cfg) {
  int64_t n = 0;
  for (const InitTensor& t : checkpoint_tensors(cfg)) n += shape_numel(t.shape);
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Random streams. All float arithmetic below is written so that no compiler contraction choice can change a
// bit (every a*b+c is an explicit fma; no other mul feeds an add), so a seed gives the same checkpoint on any
// machine, whatever the vector width or thread count.

namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;  // splitmix64 increment

inline uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t block_key(uint64_t key, int64_t block) {
  return mix64(key ^ mix64(static_cast<uint64_t>(block) * kGamma + 0x632BE59BD9B4E019ull));
}

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// sqrt(x) for x in [0, 50] from an integer first guess (3.5% off) and three Newton steps: basic IEEE operations
// only, so it vectorises (std::sqrt does not, for errno) and gives the same bits everywhere. 0 (either sign) -> 0.
inline float sqrt_newton(float x) {
  float y = bits_to_float(((float_to_bits(x) & 0x7fffffffu) >> 1) + 0x1fbd1df5u);
  y = 0.5f * (y + x / y);
  y = 0.5f * (y + x / y);
  y = 0.5f * (y + x / y);
  return x > 0.0f ? y : 0.0f;
}

// Two independent N(0, 1) values from 64 random bits (Box-Muller): the high 32 bits give the radius, the low
// 32 the angle. |z| < 6.7 by construction (u1 >= 2^-32).
inline void normal_pair(uint64_t x, float* z0, float* z1) {
  // u1 in (0, 1]: 31 bits, offset by half a step.
  const float u1 = (static_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(x >> 33))) + 0.5f) * 0x1p-31f;
  // ln(u1) = e ln2 + ln(m), m in [sqrt(1/2), sqrt(2)); ln(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.172.
  const uint32_t ub = float_to_bits(u1);
  int32_t e = static_cast<int32_t>(ub >> 23) - 127;
  float m = bits_to_float((ub & 0x007fffffu) | 0x3f800000u);
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e += big ? 1 : 0;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = std::fma(s2, 1.0f / 9.0f, 1.0f / 7.0f);
  p = std::fma(p, s2, 1.0f / 5.0f);
  p = std::fma(p, s2, 1.0f / 3.0f);
  p = std::fma(p, s2, 1.0f);
  const float ln_u = std::fma(static_cast<float>(e), 0.693147180559945f, (2.0f * s) * p);
  const float r = sqrt_newton(-2.0f * ln_u);  // ln_u <= 0

  // Angle: quadrant from the top 2 bits, a in (-pi/4, pi/4) from the other 30.
  const uint32_t lo = static_cast<uint32_t>(x);
  const uint32_t q = lo >> 30;
  const float f = (static_cast<float>(static_cast<int32_t>(lo & 0x3fffffffu)) + 0.5f) * 0x1p-30f;
  const float a = (f - 0.5f) * 1.57079632679490f;
  const float a2 = a * a;
  float sp = std::fma(a2, 1.0f / 362880.0f, -1.0f / 5040.0f);
  sp = std::fma(sp, a2, 1.0f / 120.0f);
  sp = std::fma(sp, a2, -1.0f / 6.0f);
  const float sin_a = std::fma(sp * a2, a, a);
  float cp = std::fma(a2, -1.0f / 3628800.0f, 1.0f / 40320.0f);
  cp = std::fma(cp, a2, -1.0f / 720.0f);
  cp = std::fma(cp, a2, 1.0f / 24.0f);
  cp = std::fma(cp, a2, -0.5f);
  const float cos_a = std::fma(cp, a2, 1.0f);
  // Rotate by q quarter turns: (cos, sin) of a + q pi/2.
  const bool swap = (q & 1u) != 0;
  const float cx = swap ? sin_a : cos_a, cy = swap ? cos_a : sin_a;
  const uint32_t neg_x = ((q ^ (q >> 1)) & 1u) << 31, neg_y = ((q >> 1) & 1u) << 31;
  *z0 = r * bits_to_float(float_to_bits(cx) ^ neg_x);
  *z1 = r * bits_to_float(float_to_bits(cy) ^ neg_y);
}

// Values [j0, j1) of block `kb` (0 <= j0 <= j1 <= kInitBlock) into out[0, j1 - j0).
void block_normal(uint64_t kb, float std, int64_t j0, int64_t j1, float* out) {
  float z0, z1;
  int64_t j = j0;
  if (j & 1) {  // second value of a pair
    normal_pair(mix64(kb + static_cast<uint64_t>(j / 2 + 1) * kGamma), &z0, &z1);
    out[0] = z1 * std;
    ++j;
  }
  const int64_t q0 = j / 2, q1 = j1 / 2;
  float* o = out + (j - j0) - 2 * q0;
#pragma omp simd
  for (int64_t q = q0; q < q1; ++q) {
    float a, b;
    normal_pair(mix64(kb + static_cast<uint64_t>(q + 1) * kGamma), &a, &b);
    o[2 * q] = a * std;
    o[2 * q + 1] = b * std;
  }
  if (j1 & 1 && j1 > j) {  // first value of the last pair
    normal_pair(mix64(kb + static_cast<uint64_t>(j1 / 2 + 1) * kGamma), &z0, &z1);
    out[j1 - 1 - j0] = z0 * std;
  }
}

}  // namespace

void init_normal_pair(uint64_t bits, float* z0, float* z1) { normal_pair(bits, z0, z1); }

uint64_t init_stream_key(uint64_t seed, const std::string& tensor_name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64 of the name
  for (const unsigned char ch : tensor_name) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return mix64(mix64(seed + kGamma) ^ h);
}

void init_normal(uint64_t key, float std, int64_t first, int64_t count, float* out) {
  const int64_t end = first + count;
  for (int64_t b = first / kInitBlock; b * kInitBlock < end; ++b) {
    const int64_t lo = std::max(first, b * kInitBlock), hi = std::min(end, (b + 1) * kInitBlock);
    block_normal(block_key(key, b), std, lo - b * kInitBlock, hi - b * kInitBlock, out + (lo - first));
  }
}

void init_fill(const InitTensor& t, uint64_t seed, float std, DType dtype, int64_t first, int64_t count, void* out) {
  check(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
        std::string("init: unsupported dtype ") + dtype_name(dtype) + " (supported: F32, BF16, F16)");
  check(first >= 0 && count >= 0 && first + count <= shape_numel(t.shape), "init_fill: range out of bounds");
  const size_t es = dtype_size(dtype);
  char* dst = static_cast<char*>(out);
  if (t.fill == InitFill::Ones || t.fill == InitFill::Zeros) {
    const float value = t.fill == InitFill::Ones ? 1.0f : 0.0f;
    uint8_t v[4];
    convert_from_f32(&value, dtype, v, 1);
    for (int64_t i = 0; i < count; ++i) std::memcpy(dst + static_cast<size_t>(i) * es, v, es);
  } else {
    const uint64_t key = init_stream_key(seed, t.name);
    const int64_t end = first + count, b0 = first / kInitBlock, b1 = (end + kInitBlock - 1) / kInitBlock;
#pragma omp parallel if (count > kInitBlock)
    {
      std::vector<float> scratch(dtype == DType::F32 ? 0 : static_cast<size_t>(kInitBlock));
#pragma omp for schedule(static)
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t lo = std::max(first, b * kInitBlock), hi = std::min(end, (b + 1) * kInitBlock);
        char* o = dst + static_cast<size_t>(lo - first) * es;
        float* f = dtype == DType::F32 ? reinterpret_cast<float*>(o) : scratch.data();
        block_normal(block_key(key, b), std, lo - b * kInitBlock, hi - b * kInitBlock, f);
        if (dtype != DType::F32) convert_from_f32(f, dtype, o, hi - lo);
      }
    }
  }
  if (t.zero_row >= 0 && t.shape.size() == 2) {  // padding_idx row of an embedding
    const int64_t cols = t.shape[1];
    const int64_t lo = std::max(first, t.zero_row * cols), hi = std::min(first + count, (t.zero_row + 1) * cols);
    if (hi > lo) std::memset(dst + static_cast<size_t>(lo - first) * es, 0, static_cast<size_t>(hi - lo) * es);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing a checkpoint

namespace {

std::vector<TensorSpec> specs_of(const std::vector<InitTensor>& tensors, DType dtype) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const InitTensor& t : tensors) specs.push_back({t.name, dtype, t.shape});
  return specs;
}

std::map<std::string, std::string> metadata_of(const InitOptions& opt) {
  char std_buf[32];
  std::snprintf(std_buf, sizeof std_buf, "%g", opt.initializer_range);
  return {{"format", "pt"},
          {"cepe_init", std::string("random: N(0, ") + std_buf + ") linear/embedding weights, norms 1, seed " +
                            std::to_string(opt.seed)}};
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "float32";
  }
}

}  // namespace

uint64_t checkpoint_file_bytes(const CepeConfig& cfg, DType dtype, const InitOptions& opt) {
  return plan_safetensors("model.safetensors", specs_of(checkpoint_tensors(cfg), dtype), metadata_of(opt)).file_bytes();
}

InitResult write_random_checkpoint(const std::string& dir, const CepeConfig& cfg, const InitOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const DType dtype = opt.dtype;
  check(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
        std::string("unsupported dtype ") + dtype_name(dtype) + " for a checkpoint (supported: F32, BF16, F16)");
  check(opt.initializer_range > 0 && std::isfinite(opt.initializer_range), "initializer_range must be positive");
  const std::vector<InitTensor> tensors = checkpoint_tensors(cfg);
  const fs::path out_dir(dir);
  const fs::path st_path = out_dir / "model.safetensors", cfg_path = out_dir / "config.json";

  std::error_code ec;
  if (fs::exists(out_dir, ec) && !fs::is_directory(out_dir, ec)) throw Error(dir + ": exists and is not a directory");
  if (!opt.overwrite) {
    for (const fs::path& p : {st_path, cfg_path, out_dir / "model.safetensors.index.json"})
      if (fs::exists(p, ec)) throw Error(p.string() + " already exists (pass --force to overwrite it)");
  }

  nlohmann::json config = cepe_config_to_json(cfg);
  config["torch_dtype"] = torch_dtype_name(dtype);
  config["initializer_range"] = opt.initializer_range;
  if (config["encoder_config"].is_object()) {
    config["encoder_config"]["torch_dtype"] = torch_dtype_name(dtype);
    config["encoder_config"]["initializer_range"] = opt.initializer_range;
  }
  const std::string config_text = config.dump(2) + "\n";

  // The writer creates the temporary file and reserves the space; check the free space first for a clear error.
  const std::vector<TensorSpec> specs = specs_of(tensors, dtype);
  const std::map<std::string, std::string> meta = metadata_of(opt);
  const uint64_t need = plan_safetensors(st_path.string(), specs, meta).file_bytes() + config_text.size();
  fs::path probe = fs::absolute(out_dir, ec);  // the directory, or its nearest existing ancestor
  while (!ec && !fs::exists(probe, ec) && probe.has_relative_path()) probe = probe.parent_path();
  const fs::space_info space = fs::space(probe, ec);
  if (!ec && space.available < need) {
    char buf[160];
    std::snprintf(buf, sizeof buf, ": not enough disk space: the checkpoint needs %.2f GB, %.2f GB available",
                  static_cast<double>(need) / 1e9, static_cast<double>(space.available) / 1e9);
    throw Error(dir + buf);
  }
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(dir + ": cannot create the directory: " + ec.message());

  SafeTensorsWriter w(st_path.string(), specs, meta);
  std::map<std::string, const InitTensor*> by_name;
  for (const InitTensor& t : tensors) by_name[t.name] = &t;
  const float std_f = static_cast<float>(opt.initializer_range);
  const size_t es = dtype_size(dtype);
  const uint64_t data_bytes = w.file_bytes() - w.bytes_written();  // no bigger buffers than the data needs
  const size_t cap = std::max<size_t>(std::min<uint64_t>(opt.buffer_bytes, data_bytes) / es, 1) * es;

  // Two buffers: one is generated (OpenMP) while the other is written (an I/O thread).
  std::vector<char> buf[2] = {std::vector<char>(cap), std::vector<char>(cap)};
  std::thread io;
  std::exception_ptr io_error;
  auto wait_io = [&] {
    if (io.joinable()) io.join();
    if (io_error) std::rethrow_exception(io_error);
  };
  auto submit = [&](int which, size_t n) {
    wait_io();
    if (opt.progress) opt.progress(w.bytes_written(), w.file_bytes());
    io = std::thread([&w, &io_error, p = buf[which].data(), n] {
      try {
        w.write(p, n);
      } catch (...) {
        io_error = std::current_exception();
      }
    });
  };
  try {
    int cur = 0;
    size_t fill = 0;
    for (const TensorInfo& ti : w.order()) {
      const InitTensor& t = *by_name.at(ti.name);
      const int64_t numel = shape_numel(t.shape);
      for (int64_t first = 0; first < numel;) {
        const int64_t n = std::min<int64_t>(numel - first, static_cast<int64_t>((cap - fill) / es));
        init_fill(t, opt.seed, std_f, dtype, first, n, buf[cur].data() + fill);
        fill += static_cast<size_t>(n) * es;
        first += n;
        if (fill == cap) {
          submit(cur, fill);
          cur ^= 1;
          fill = 0;
        }
      }
    }
    if (fill) submit(cur, fill);
    wait_io();
  } catch (...) {
    if (io.joinable()) io.join();
    throw;
  }
  if (opt.progress) opt.progress(w.bytes_written(), w.file_bytes());
  w.commit();
  // config.json last: a directory with a config.json has a complete checkpoint.
  write_text_atomic(cfg_path.string(), config_text);

  InitResult r;
  r.tensors = static_cast<int64_t>(tensors.size());
  r.parameters = parameter_count(cfg);
  r.file_bytes = w.file_bytes();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace cepe
