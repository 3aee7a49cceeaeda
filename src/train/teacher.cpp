#include "train/teacher.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <nlohmann/json.hpp>

#include "cepe/model.h"
#include "core/half.h"
#include "core/progress.h"
#include "core/safetensors_writer.h"

namespace cepe::train {

std::string samples_identity(const TrainConfig& cfg) {
  nlohmann::json data = cfg.raw.value("data", nlohmann::json::object());
  data.erase("teacher");
  return nlohmann::json{{"data", data}, {"seed", cfg.raw.value("seed", 0)}}.dump();
}

void write_teacher_targets(const TrainConfig& cfg, const TeacherOptions& opt) {
  check(opt.samples > 0, "teacher: --samples must be positive");
  check(opt.top_k > 0, "teacher: --top-k must be positive");
  auto teacher = CepeModel::load(opt.teacher);
  const CepeConfig& tc = teacher->config();
  check(tc.architecture != Architecture::MaskedLM, opt.teacher + ": the teacher must be a causal LM, not LlamaForMLM");
  const int64_t V = tc.decoder.vocab_size;
  check(opt.top_k < V, [&] { return "teacher: --top-k " + std::to_string(opt.top_k) + " must be below the vocabulary " + std::to_string(V); });
  Sampler data(make_sampler_config(cfg, true, 1, 0, 1));
  check(data.has_encoder(), "teacher: the config's training data has no context (the teacher reads context + decoder tokens)");
  const int64_t T = cfg.data.seq_len, C = cfg.data.n_ctx * cfg.data.ctx_len, W = C + T, k = opt.top_k;
  const int64_t N = opt.samples;

  std::map<std::string, std::string> meta = {{"format", "cepe.teacher"},
                                             {"version", "1"},
                                             {"k", std::to_string(k)},
                                             {"seq_len", std::to_string(T)},
                                             {"samples", std::to_string(N)},
                                             {"teacher", opt.teacher},
                                             {"samples_of", samples_identity(cfg)}};
  SafeTensorsWriter out(opt.output, {{"index", DType::I32, {N, T, k}}, {"prob", DType::F16, {N, T, k + 1}}}, meta);
  // The data section is written tensor by tensor in out.order(): run the teacher once, keep both in memory
  // (N·T·(k·4 + (k+1)·2) bytes), then write them in that order.
  std::vector<int32_t> index(static_cast<size_t>(N * T * k));
  std::vector<uint16_t> prob(static_cast<size_t>(N * T * (k + 1)));
  Progress bar("teacher", N, "samples", stderr, opt.quiet ? Progress::Style::Quiet : Progress::Style::Auto);
  std::vector<int32_t> ids;
  std::vector<int64_t> pos;
  std::vector<double> p(static_cast<size_t>(V));
  std::vector<int32_t> order(static_cast<size_t>(V));
  for (int64_t s0 = 0; s0 < N; s0 += opt.batch) {
    const int64_t b = std::min(opt.batch, N - s0);
    const Batch batch = data.samples(s0, b);
    check(batch.rows == b, "teacher: the training data ran out of samples");
    // The teacher's window: the context tokens (chunks in order, flattened), then the decoder tokens.
    ids.resize(static_cast<size_t>(b * W));
    pos.resize(ids.size());
    for (int64_t r = 0; r < b; ++r) {
      std::copy(batch.encoder_input_ids.begin() + r * C, batch.encoder_input_ids.begin() + (r + 1) * C, ids.begin() + r * W);
      std::copy(batch.input_ids.begin() + r * T, batch.input_ids.begin() + (r + 1) * T, ids.begin() + r * W + C);
      for (int64_t t = 0; t < W; ++t) pos[static_cast<size_t>(r * W + t)] = t;
    }
    const Tensor logits = teacher->decode(ids.data(), b, W, pos.data(), nullptr, nullptr, nullptr);
    for (int64_t r = 0; r < b; ++r)
      for (int64_t j = 0; j < T; ++j) {
        const float* x = logits.f32() + (r * W + C + j) * V;
        double m = -INFINITY, z = 0;
        for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(x[v]));
        for (int64_t v = 0; v < V; ++v) z += (p[static_cast<size_t>(v)] = std::exp(x[v] - m));
        std::iota(order.begin(), order.end(), 0);
        // Highest first; ties by id, so the choice is deterministic.
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t c) {
          return p[static_cast<size_t>(a)] != p[static_cast<size_t>(c)] ? p[static_cast<size_t>(a)] > p[static_cast<size_t>(c)] : a < c;
        });
        const int64_t row = (s0 + r) * T + j;
        double top = 0;
        for (int64_t i = 0; i < k; ++i) {
          const double pi = p[static_cast<size_t>(order[static_cast<size_t>(i)])] / z;
          top += pi;
          index[static_cast<size_t>(row * k + i)] = order[static_cast<size_t>(i)];
          prob[static_cast<size_t>(row * (k + 1) + i)] = f32_to_f16(static_cast<float>(pi));
        }
        prob[static_cast<size_t>(row * (k + 1) + k)] = f32_to_f16(static_cast<float>(std::max(0.0, 1.0 - top)));
      }
    bar.update(s0 + b);
  }
  for (const TensorInfo& t : out.order()) {
    if (t.name == "index") out.write(index.data(), index.size() * sizeof(int32_t));
    else out.write(prob.data(), prob.size() * sizeof(uint16_t));
  }
  out.commit();
  bar.finish();
}

TeacherTargets TeacherTargets::open(const std::string& path, const TrainConfig& cfg, int64_t vocab) {
  TeacherTargets t;
  t.st_ = SafeTensors::open(path);
  const auto& meta = t.st_.metadata();
  auto get = [&](const char* key) {
    auto it = meta.find(key);
    if (it == meta.end()) throw Error(path + ": not cepe teacher targets (no '" + key + "' in the metadata)");
    return it->second;
  };
  if (get("format") != "cepe.teacher") throw Error(path + ": not cepe teacher targets (format '" + get("format") + "')");
  if (get("samples_of") != samples_identity(cfg))
    throw Error(path + ": the teacher targets were made for other training samples (another data section or seed); "
                       "rerun `cepe data teacher` with this config");
  check(t.st_.has("index") && t.st_.has("prob"), path + ": teacher targets need the tensors index and prob");
  t.index_ = t.st_.get("index");
  t.prob_ = t.st_.get("prob");
  check(t.index_.dtype() == DType::I32 && t.index_.rank() == 3 && t.prob_.dtype() == DType::F16 && t.prob_.rank() == 3,
        path + ": teacher targets: index must be I32 [samples, seq_len, k] and prob F16 [samples, seq_len, k+1]");
  t.samples_ = t.index_.dim(0);
  t.len_ = t.index_.dim(1);
  t.k_ = t.index_.dim(2);
  check(t.prob_.shape() == Shape{t.samples_, t.len_, t.k_ + 1}, [&] {
    return path + ": prob " + shape_str(t.prob_.shape()) + " does not match index " + shape_str(t.index_.shape()) + " (k+1 columns)";
  });
  check(t.len_ == cfg.data.seq_len, [&] {
    return path + ": teacher targets for " + std::to_string(t.len_) + " positions, the config trains " +
           std::to_string(cfg.data.seq_len) + " decoder tokens";
  });
  const int32_t* ix = t.index_.data<int32_t>();
  for (int64_t i = 0; i < t.index_.numel(); ++i)
    if (ix[i] < 0 || ix[i] >= vocab)
      throw Error(path + ": teacher token id " + std::to_string(ix[i]) + " at flat index " + std::to_string(i) +
                  " is not in the model's vocabulary [0, " + std::to_string(vocab) + ")");
  const uint16_t* pr = t.prob_.data<uint16_t>();
  for (int64_t i = 0; i < t.prob_.numel(); ++i) {
    const float v = f16_to_f32(pr[i]);
    if (!(v >= 0.0f && v <= 1.0f))
      throw Error(path + ": teacher probability " + std::to_string(v) + " at flat index " + std::to_string(i) +
                  " is not in [0, 1]");
  }
  return t;
}

void TeacherTargets::fill(int64_t i, int32_t* index, float* prob) const {
  check(i >= 0 && i < samples_, [&] {
    return "teacher targets cover samples [0, " + std::to_string(samples_) + "), training reached sample " + std::to_string(i) +
           ": write more with `cepe data teacher --samples`";
  });
  std::copy(index_.data<int32_t>() + i * len_ * k_, index_.data<int32_t>() + (i + 1) * len_ * k_, index);
  convert_to_f32(DType::F16, prob_.data<uint16_t>() + i * len_ * (k_ + 1), prob, len_ * (k_ + 1));
}

}  // namespace cepe::train
