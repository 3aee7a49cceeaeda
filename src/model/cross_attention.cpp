#include "model/cross_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/half.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/shared_kv_attention.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/activation.h"

namespace cepe {

namespace {

constexpr int64_t kKeyBlock = 512;  // encoder keys per block: bounds every scratch buffer
// Folded query rows (heads x tokens) per absorbed pass: their scratch [rows, d_enc] stays in L2.
constexpr int64_t kAbsorbedRows = 64;
const float kNegInf = -std::numeric_limits<float>::infinity();

// Rows [k0, k0+n) of batch row b of Φ as f32 (a view when Φ is F32, else widened into `buf`).
const float* state_rows(const Tensor& st, int64_t b, int64_t k0, int64_t n, std::vector<float>& buf) {
  const int64_t K = st.dim(1), de = st.dim(2);
  const size_t off = static_cast<size_t>((b * K + k0) * de);
  if (st.dtype() == DType::F32) return st.f32() + off;
  buf.resize(static_cast<size_t>(n * de));
  convert_to_f32(st.dtype(), static_cast<const char*>(st.raw()) + off * dtype_size(st.dtype()), buf.data(), n * de);
  return buf.data();
}

bool any_key(const uint8_t* mask, int64_t K) {
  if (!mask) return K > 0;
  for (int64_t j = 0; j < K; ++j)
    if (mask[j]) return true;
  return false;
}

struct Shapes {
  int64_t B, T, K, de, hd, Hq, Hkv, group, qd, kvd;
  float scale;
};

// A batch row whose context is all padding: the reference's additive finfo.min mask makes every key equal,
// so each query averages V uniformly over all keys: W_v · mean(Φ) (spec §6.13).
void fully_masked_row(const Shapes& s, const CrossAttentionWeights& w, const Tensor& phi, int64_t b, float* att) {
  std::vector<double> sum(static_cast<size_t>(s.de), 0.0);
  std::vector<float> buf;
  for (int64_t k0 = 0; k0 < s.K; k0 += kKeyBlock) {
    const int64_t n = std::min(kKeyBlock, s.K - k0);
    const float* rows = state_rows(phi, b, k0, n, buf);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < s.de; ++i) sum[static_cast<size_t>(i)] += rows[j * s.de + i];
  }
  std::vector<float> mean(static_cast<size_t>(s.de)), vbar(static_cast<size_t>(s.kvd));
  for (int64_t i = 0; i < s.de; ++i) mean[static_cast<size_t>(i)] = static_cast<float>(sum[static_cast<size_t>(i)] / static_cast<double>(s.K));
  kernels::linear(mean.data(), 1, s.de, w.v, vbar.data());
  for (int64_t t = 0; t < s.T; ++t)
    for (int64_t h = 0; h < s.Hq; ++h)
      std::memcpy(att + (b * s.T + t) * s.qd + h * s.hd, vbar.data() + (h / s.group) * s.hd,
                  static_cast<size_t>(s.hd) * 4);
}

// Recompute and Cached: K/V blocks (projected now, or read from the cache), per-head online softmax.
void projected(const Shapes& s, const CrossAttentionWeights& w, const Tensor& phi, const uint8_t* mask_b, int64_t b,
               const float* q, float* att, const Tensor* kc, const Tensor* vc) {
  std::vector<float> m(static_cast<size_t>(s.Hq * s.T), kNegInf), l(static_cast<size_t>(s.Hq * s.T), 0.0f);
  float* acc = att + b * s.T * s.qd;
  for (int64_t t = 0; t < s.T; ++t) std::fill(acc + t * s.qd, acc + t * s.qd + s.qd, 0.0f);
  std::vector<float> kbuf, vbuf, phibuf;
  for (int64_t k0 = 0; k0 < s.K; k0 += kKeyBlock) {
    const int64_t n = std::min(kKeyBlock, s.K - k0);
    const float *kb, *vb;
    if (kc) {
      kb = kc->f32() + (b * s.K + k0) * s.kvd;
      vb = vc->f32() + (b * s.K + k0) * s.kvd;
    } else {
      const float* rows = state_rows(phi, b, k0, n, phibuf);
      kbuf.resize(static_cast<size_t>(n * s.kvd));
      vbuf.resize(static_cast<size_t>(n * s.kvd));
      kernels::linear(rows, n, s.de, w.k, kbuf.data());
      kernels::linear(rows, n, s.de, w.v, vbuf.data());
      kb = kbuf.data();
      vb = vbuf.data();
    }
    const uint8_t* mb = mask_b ? mask_b + k0 : nullptr;
#pragma omp parallel if (s.Hq > 1 && s.T * n * s.hd * s.Hq > (1 << 16))
    {
      std::vector<float> sc(static_cast<size_t>(s.T * n));
#pragma omp for schedule(static)
      for (int64_t h = 0; h < s.Hq; ++h) {
        const int64_t g = h / s.group;
        const float* qh = q + b * s.T * s.qd + h * s.hd;
        if (s.T == 1)
          kernels::gemv(false, n, s.hd, s.scale, kb + g * s.hd, s.kvd, qh, sc.data());
        else
          kernels::gemm(false, true, s.T, n, s.hd, s.scale, qh, s.qd, kb + g * s.hd, s.kvd, 0.0f, sc.data(), n);
        kernels::online_softmax_block(sc.data(), s.T, n, mb, m.data() + h * s.T, l.data() + h * s.T, acc + h * s.hd, s.qd,
                             vb + g * s.hd, s.kvd, s.hd);
      }
    }
  }
  for (int64_t h = 0; h < s.Hq; ++h) kernels::online_softmax_finish(acc + h * s.hd, s.T, s.qd, l.data() + h * s.T, s.hd);
}

// Absorbed: per head, q' = W_k,gᵀ q (folded into encoder space), scores q'·φ_j, u = Σ a_j φ_j, out = W_v,g u.
// All heads' folded queries attend over the shared states in one pass (kernels/cpu/shared_kv_attention.h).
void absorbed(const Shapes& s, const CrossAttentionWeights& w, const Tensor& phi, const uint8_t* mask_b, int64_t b,
              const float* q, float* att) {
  const int64_t tb_max = std::max<int64_t>(1, kAbsorbedRows / s.Hq);
  const size_t phi_es = dtype_size(phi.dtype());
  const void* phi_b = static_cast<const char*>(phi.raw()) + static_cast<size_t>(b * s.K * s.de) * phi_es;
  // Kept per thread across calls: a decode step comes here once per layer.
  thread_local std::vector<float> qf, u, out;
  for (int64_t t0 = 0; t0 < s.T; t0 += tb_max) {
    const int64_t tb = std::min(tb_max, s.T - t0), M = s.Hq * tb;
    qf.resize(static_cast<size_t>(M * s.de));
    kernels::fold_queries(q + (b * s.T + t0) * s.qd, s.qd, tb, s.Hq, s.Hkv, s.hd, w.k, s.scale, qf.data());
    u.resize(static_cast<size_t>(M * s.de));
    kernels::shared_kv_attention(qf.data(), M, s.de, phi_b, phi.dtype(), s.K, mask_b, u.data());
    // out[t, h] = W_v,g u[h, t]: one linear per head over its group's rows of W_v.
    out.resize(static_cast<size_t>(tb * s.hd));
    for (int64_t h = 0; h < s.Hq; ++h) {
      const int64_t g = h / s.group;
      kernels::linear(u.data() + h * tb * s.de, tb, s.de, w.v.slice0(g * s.hd, (g + 1) * s.hd), out.data());
      for (int64_t t = 0; t < tb; ++t)
        std::memcpy(att + (b * s.T + t0 + t) * s.qd + h * s.hd, out.data() + t * s.hd, static_cast<size_t>(s.hd) * 4);
    }
  }
}

// Projects every key's K/V of layer `layer` once (block by block over Φ).
void fill_cache(const Shapes& s, const CrossAttentionWeights& w, const Tensor& phi, Tensor* kc, Tensor* vc) {
  *kc = Tensor::empty(DType::F32, {s.B, s.K, s.kvd});
  *vc = Tensor::empty(DType::F32, {s.B, s.K, s.kvd});
  std::vector<float> buf;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t k0 = 0; k0 < s.K; k0 += kKeyBlock) {
      const int64_t n = std::min(kKeyBlock, s.K - k0);
      const float* rows = state_rows(phi, b, k0, n, buf);
      kernels::linear(rows, n, s.de, w.k, kc->f32() + (b * s.K + k0) * s.kvd);
      kernels::linear(rows, n, s.de, w.v, vc->f32() + (b * s.K + k0) * s.kvd);
    }
}

}  // namespace

void cross_attention(const LlamaConfig& cfg, const CrossAttentionWeights& w, size_t layer, const CrossInput& in,
                     int64_t batch, int64_t len, float* h) {
  const Tensor& phi = *in.states[layer];
  Shapes s;
  s.B = batch;
  s.T = len;
  s.K = in.keys;
  s.de = phi.dim(2);
  s.hd = cfg.head_dim();
  s.Hq = cfg.num_attention_heads;
  s.Hkv = cfg.num_key_value_heads;
  s.group = s.Hq / s.Hkv;
  s.qd = s.Hq * s.hd;
  s.kvd = s.Hkv * s.hd;
  s.scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  const int64_t BT = batch * len, d = cfg.hidden_size;

  Tensor xn = Tensor::empty(DType::F32, {BT, d}), q = Tensor::empty(DType::F32, {BT, s.qd});
  Tensor att = Tensor::empty(DType::F32, {BT, s.qd});
  kernels::rmsnorm(h, w.norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), xn.f32());
  kernels::linear(xn.f32(), BT, d, w.q, q.f32());

  // Stats cover the strategy's work over the encoder states, from the projected queries to the attention
  // output; the q/o projections are the same decoder linears in every strategy and are not counted.
  const auto t_start = std::chrono::steady_clock::now();
  const Tensor *kc = nullptr, *vc = nullptr;
  bool kc_was_cached = false;
  if (in.mode == CrossAttnMode::Cached) {
    Tensor& k = (*in.kv_k)[layer];
    Tensor& v = (*in.kv_v)[layer];
    kc_was_cached = k.defined();
    if (!k.defined()) fill_cache(s, w, phi, &k, &v);
    kc = &k;
    vc = &v;
  }
  for (int64_t b = 0; b < batch; ++b) {
    const uint8_t* mask_b = in.mask ? in.mask + b * s.K : nullptr;
    if (!any_key(mask_b, s.K)) {
      fully_masked_row(s, w, phi, b, att.f32());
    } else if (in.mode == CrossAttnMode::Absorbed) {
      absorbed(s, w, phi, mask_b, b, q.f32(), att.f32());
    } else {
      projected(s, w, phi, mask_b, b, q.f32(), att.f32(), kc, vc);
    }
  }
  const double strategy_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  kernels::linear(att.f32(), BT, s.qd, w.o, xn.f32());
  kernels::add_inplace(h, xn.f32(), BT * d);
  if (in.stats) {
    // Multiply-adds counted as 2 FLOPs: the strategy's work over the K keys.
    const double T = static_cast<double>(BT), K = static_cast<double>(s.K) * static_cast<double>(batch);
    const double de = static_cast<double>(s.de), Hq = static_cast<double>(s.Hq), hd = static_cast<double>(s.hd);
    double f = 0.0;
    const double attend = 4.0 * T / static_cast<double>(batch) * Hq * K * hd;  // scores + weighted sum
    if (in.mode == CrossAttnMode::Absorbed)
      f += 4.0 * T / static_cast<double>(batch) * Hq * K * de + 4.0 * T * Hq * hd * de;
    else if (in.mode == CrossAttnMode::Recompute || !kc_was_cached)
      f += 4.0 * K * de * static_cast<double>(s.kvd) + attend;
    else
      f += attend;
    in.stats->flops += f;
    in.stats->seconds += strategy_seconds;
  }
}

namespace {

kernels::AttentionArgs cross_args(const LlamaConfig& cfg, const CrossActivations& a, const uint8_t* mask,
                                  int64_t batch, int64_t len, int64_t keys) {
  kernels::AttentionArgs args = kernels::heads_layout(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim(),
                                                      a.q.f32(), a.attn.f32(), batch, len, a.k.f32(), a.v.f32(), keys);
  args.key_mask = mask;
  args.mask_batch_stride = keys;  // one joint softmax over every chunk's keys, no positions, not causal
  args.lse = a.lse.f32();
  args.probs = a.probs.defined() ? a.probs.f32() : nullptr;
  return args;
}

}  // namespace

void cross_attention_train(const LlamaConfig& cfg, const CrossAttentionWeights& w, const Tensor& phi,
                           const uint8_t* mask, int64_t batch, int64_t len, float* h, CrossActivations& a) {
  check(phi.dtype() == DType::F32 && phi.rank() == 3 && phi.dim(0) == batch, [&] {
    return "cross-attention training reads F32 encoder states [batch, keys, hidden], got " + shape_str(phi.shape()) +
           " " + dtype_name(phi.dtype());
  });
  const int64_t BT = batch * len, d = cfg.hidden_size, K = phi.dim(1), de = phi.dim(2);
  const int64_t qd = cfg.num_attention_heads * cfg.head_dim(), kvd = cfg.kv_dim();
  a.rstd = Tensor::empty(DType::F32, {BT});
  a.normed = Tensor::empty(DType::F32, {BT, d});
  a.q = Tensor::empty(DType::F32, {BT, qd});
  a.k = Tensor::empty(DType::F32, {batch * K, kvd});
  a.v = Tensor::empty(DType::F32, {batch * K, kvd});
  a.attn = Tensor::empty(DType::F32, {BT, qd});
  a.lse = Tensor::empty(DType::F32, {batch, cfg.num_attention_heads, len});
  if (kernels::keep_attention_probs(batch, cfg.num_attention_heads, len, K))
    a.probs = Tensor::empty(DType::F32, {batch, cfg.num_attention_heads, len, K});
  kernels::rmsnorm(h, w.norm.f32(), BT, d, static_cast<float>(cfg.rms_norm_eps), a.normed.f32(), a.rstd.f32());
  kernels::linear(a.normed.f32(), BT, d, w.q, a.q.f32());
  kernels::linear(phi.f32(), batch * K, de, w.k, a.k.f32());
  kernels::linear(phi.f32(), batch * K, de, w.v, a.v.f32());
  kernels::attention(cross_args(cfg, a, mask, batch, len, K));
  Tensor out = Tensor::empty(DType::F32, {BT, d});
  kernels::linear(a.attn.f32(), BT, qd, w.o, out.f32());
  kernels::add_inplace(h, out.f32(), BT * d);
}

void cross_attention_backward(const LlamaConfig& cfg, const CrossAttentionWeights& w, const Tensor& phi,
                              const uint8_t* mask, int64_t batch, int64_t len, const float* input,
                              const CrossActivations& a, float* dh, CrossAttentionWeights* dw, float* dphi) {
  const int64_t BT = batch * len, d = cfg.hidden_size, K = phi.dim(1), de = phi.dim(2);
  const int64_t qd = cfg.num_attention_heads * cfg.head_dim(), kvd = cfg.kv_dim();
  auto grad = [&](Tensor CrossAttentionWeights::*m) { return dw && (dw->*m).defined() ? (dw->*m).f32() : nullptr; };
  // Tensors, not vectors: in training they come from the buffer pool (core/buffer_pool.h).
  Tensor d_attn = Tensor::empty(DType::F32, {BT, qd}), dq = Tensor::zeros(DType::F32, {BT, qd});
  Tensor dk = Tensor::zeros(DType::F32, {batch * K, kvd}), dv = Tensor::zeros(DType::F32, {batch * K, kvd});
  Tensor d_normed = Tensor::empty(DType::F32, {BT, d});
  kernels::linear_backward(a.attn.f32(), dh, BT, qd, w.o, d_attn.f32(), false, grad(&CrossAttentionWeights::o));
  kernels::attention_backward(cross_args(cfg, a, mask, batch, len, K), d_attn.f32(), qd, dq.f32(), dk.f32(), dv.f32());
  kernels::linear_backward(phi.f32(), dk.f32(), batch * K, de, w.k, dphi, true, grad(&CrossAttentionWeights::k));
  kernels::linear_backward(phi.f32(), dv.f32(), batch * K, de, w.v, dphi, true, grad(&CrossAttentionWeights::v));
  kernels::linear_backward(a.normed.f32(), dq.f32(), BT, d, w.q, d_normed.f32(), false, grad(&CrossAttentionWeights::q));
  kernels::rmsnorm_backward(d_normed.f32(), input, w.norm.f32(), a.rstd.f32(), BT, d, dh, true,
                            grad(&CrossAttentionWeights::norm));
}

CrossAttnMode resolve_cross_attn(CrossAttnMode requested, const LlamaConfig& dec, int64_t enc_hidden, int64_t len,
                                 bool kv_cached, size_t kv_bytes, size_t kv_budget) {
  if (requested != CrossAttnMode::Auto) return requested;
  // Estimated cost per key and layer of a call with T query tokens, in FLOPs, with memory traffic counted
  // at the machine balance of ~7 FLOP per DRAM byte (docs/gemm-backend.md): only which is smallest matters.
  constexpr double kFlopPerByte = 7.0;
  const double H = static_cast<double>(dec.num_attention_heads), hd = static_cast<double>(dec.head_dim());
  const double de = static_cast<double>(enc_hidden), kvd = static_cast<double>(dec.kv_dim());
  // Absorbed: all heads' folded queries against Φ (read once, f32 at most).
  auto absorbed = [&](double T) { return std::max(4.0 * T * H * de, kFlopPerByte * 4.0 * de); };
  // Recompute: K/V projected from Φ, then attention.
  auto recompute = [&](double T) { return 4.0 * de * kvd + 4.0 * T * H * hd; };
  // Cached, once filled: attention over f32 K/V streamed from memory.
  auto cached = [&](double T) { return std::max(4.0 * T * H * hd, kFlopPerByte * 8.0 * kvd); };
  const double T = static_cast<double>(len);
  if (kv_cached || kv_bytes <= kv_budget) {
    // Filling the cache costs one recompute; it pays off only if decoding from it (T = 1) is the cheapest.
    const bool pays = kv_cached ? cached(T) <= std::min(absorbed(T), recompute(T))
                                : cached(1.0) < std::min(absorbed(1.0), recompute(1.0));
    if (pays) return CrossAttnMode::Cached;
  }
  return absorbed(T) <= recompute(T) ? CrossAttnMode::Absorbed : CrossAttnMode::Recompute;
}

}  // namespace cepe
