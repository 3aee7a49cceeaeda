#include <chrono>

#include "cepe/generate.h"
#include "cepe/kv_cache.h"

namespace cepe {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

GenerateResult generate(const CepeModel& model, GenerateRequest& req, const GenerateOptions& opt,
                        const TokenCallback& on_token) {
  const CepeConfig& cfg = model.config();
  const int64_t B = req.batch, T = req.len;
  check(B > 0 && T > 0, "generate: empty input_ids");
  check(static_cast<int64_t>(req.ids.size()) == B * T, "generate: input_ids size does not match [batch, len]");
  check(req.mask.empty() || static_cast<int64_t>(req.mask.size()) == B * T,
        "generate: attention_mask size does not match input_ids");
  check(opt.max_new_tokens >= 0, "max new tokens must be >= 0");
  constexpr int64_t kMaxTokens = int64_t{1} << 24;
  check(opt.max_new_tokens <= kMaxTokens - T,
        "prompt (" + std::to_string(T) + " tokens) + max new tokens (" + std::to_string(opt.max_new_tokens) +
            ") exceed the limit of " + std::to_string(kMaxTokens) + " tokens");
  const int64_t eos = opt.eos_id.value_or(cfg.decoder.eos_token_id);
  const int64_t pad = opt.pad_id.value_or(cfg.decoder.pad_token_id.value_or(eos));
  model.check_decoder_ids(req.ids.data(), B * T, "input_ids");

  GenerateResult res;
  std::vector<uint8_t> mask = req.mask.empty() ? std::vector<uint8_t>(static_cast<size_t>(B * T), 1) : req.mask;

  double t0 = now_s();
  EncodedContext owned;
  EncodedContext* ctx = req.encoded;
  if (!ctx && req.context) {
    owned = model.encode(*req.context, req.ids.data(), mask.data(), T, opt.encode);
    ctx = &owned;
  }
  if (ctx) res.timings.context_tokens = ctx->batch * ctx->keys();
  res.timings.encode_s = now_s() - t0;

  const int64_t cap = T + opt.max_new_tokens;
  auto cache = model.make_cache(B, cap);
  // The attention mask over [past + current], kept as [B, cap] rows so a step sets one more column
  // (passed with row stride cap: no copies per step).
  std::vector<uint8_t> full(static_cast<size_t>(B * cap), 0);
  std::vector<int64_t> valid(static_cast<size_t>(B), 0);  // running cumsum(mask)
  std::vector<int64_t> pos(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const uint8_t m = mask[static_cast<size_t>(b * T + t)];
      full[static_cast<size_t>(b * cap + t)] = m;
      valid[static_cast<size_t>(b)] += m;
      // position_ids = cumsum(mask) - 1, with pads set to 1 (the reference's prepare_inputs_for_generation).
      pos[static_cast<size_t>(b * T + t)] = m ? valid[static_cast<size_t>(b)] - 1 : 1;
    }
  res.sequences.assign(static_cast<size_t>(B), {});
  for (int64_t b = 0; b < B; ++b)
    res.sequences[static_cast<size_t>(b)].assign(req.ids.begin() + b * T, req.ids.begin() + (b + 1) * T);
  if (opt.max_new_tokens == 0) return res;


  Sampler sampler(opt.sampling);
  std::vector<bool> finished(static_cast<size_t>(B), false);
  std::vector<int32_t> next(static_cast<size_t>(B));
  const int64_t V = cfg.decoder.vocab_size;

  t0 = now_s();
  DecodeOptions dopt = opt.decode;
  dopt.last_only = true;
  dopt.mask_stride = cap;
  Tensor logits;
  try {
    logits = model.decode(req.ids.data(), B, T, pos.data(), full.data(), cache.get(), ctx, dopt);
  } catch (const Error& e) {
    throw Error(std::string("prefill: ") + e.what());
  }
  res.timings.prefill_s = now_s() - t0;
  res.timings.prefill_tokens = B * T;

  t0 = now_s();
  std::vector<int64_t> step_pos(static_cast<size_t>(B));
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    if (step > 0) {
      try {
        logits = model.decode(next.data(), B, 1, step_pos.data(), full.data(), cache.get(), ctx, dopt);
      } catch (const Error& e) {
        throw Error("decoding step " + std::to_string(step) + ": " + e.what());
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      const int32_t tok = sampler.sample(logits.f32() + b * V, V);
      next[static_cast<size_t>(b)] = finished[static_cast<size_t>(b)] ? static_cast<int32_t>(pad) : tok;
    }
    for (int64_t b = 0; b < B; ++b) {
      res.sequences[static_cast<size_t>(b)].push_back(next[static_cast<size_t>(b)]);
      if (next[static_cast<size_t>(b)] == eos) finished[static_cast<size_t>(b)] = true;
      // The new token's mask is 1; its position is the running count of real tokens.
      full[static_cast<size_t>(b * cap + T + step)] = 1;
      step_pos[static_cast<size_t>(b)] = valid[static_cast<size_t>(b)]++;
    }
    res.steps = step + 1;
    if (on_token && !on_token(step, next, finished)) break;
    bool all = true;
    for (bool f : finished) all = all && f;
    if (all) break;
  }
  res.timings.decode_s = now_s() - t0;
  res.timings.decode_tokens = B * std::max<int64_t>(0, res.steps - 1);
  return res;
}

}  // namespace cepe
