// The optimizer layer against PyTorch (tests/data/optim, from tests/reference/make_optim_goldens.py):
// AdamW step by step, clip_grad_norm_, HF's LambdaLR schedules; resume from a saved state; state validation.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "cepe/safetensors.h"
#include "golden.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace cepe::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct OptimGolden {
  SafeTensors st = SafeTensors::open(testing::data_dir("optim") + "/golden.safetensors");
  json meta = json::parse(st.metadata().at("golden"));

  // Row `step` of a [steps, shape] tensor (or the whole tensor when step < 0).
  std::vector<float> row(const std::string& name, int64_t step = -1) const {
    const Tensor t = st.get(name);
    const int64_t n = step < 0 ? t.numel() : t.numel() / t.dim(0);
    const float* p = t.f32() + (step < 0 ? 0 : step * n);
    return std::vector<float>(p, p + n);
  }
};

const OptimGolden& golden() {
  static const OptimGolden g;
  return g;
}

// A run's parameters as owned buffers plus the slots that point into them.
struct Model {
  std::map<std::string, std::vector<float>> value, grad;
  std::vector<ParamSlot> slots;

  Model(const json& run, const OptimGolden& g) {
    for (const json& p : run["params"]) {
      const std::string name = p["name"];
      value[name] = g.row(run["name"].get<std::string>() + ".init." + name);
      grad[name].assign(value[name].size(), 0.0f);
    }
    for (const json& p : run["params"]) {
      const std::string name = p["name"];
      slots.push_back({name, p["shape"].get<Shape>(), value[name].data(), grad[name].data(), uses_weight_decay(name)});
    }
  }
  Model(const Model&) = delete;
};

AdamWConfig config_of(const json& run) {
  AdamWConfig c;
  c.weight_decay = run["weight_decay"];
  return c;
}

LrSchedule schedule_of(const json& run) {
  LrSchedule s;
  s.kind = parse_schedule_kind(run["schedule"].get<std::string>());
  s.base_lr = run["lr"];
  s.total_steps = run["steps"];
  s.warmup_steps = run.contains("warmup_ratio") ? warmup_steps_from_ratio(s.total_steps, run["warmup_ratio"])
                                                : run["warmup_steps"].get<int64_t>();
  return s;
}

// Largest |a - b| / max(|b|, 1e-3) over two equal-length vectors; counts the elements that differ in any bit.
struct Diff {
  double max_rel = 0;
  int64_t differing = 0;
};
Diff compare(const float* a, const std::vector<float>& b) {
  Diff d;
  for (size_t i = 0; i < b.size(); ++i) {
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) ++d.differing;
    d.max_rel = std::max(d.max_rel, std::abs(double(a[i]) - double(b[i])) / std::max(std::abs(double(b[i])), 1e-3));
  }
  return d;
}

TEST(OptimizerGolden, GoldenCoversClippedAndUnclippedRuns) {
  const json& runs = golden().meta["runs"];
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0]["clipped_steps"], runs[0]["steps"]);  // "clip": every step clipped
  EXPECT_EQ(runs[1]["clipped_steps"], 0);                 // "noclip": none
}

TEST(OptimizerGolden, DecayFlagsMatchTheGoldenGroups) {
  for (const json& run : golden().meta["runs"])
    for (const json& p : run["params"]) EXPECT_EQ(uses_weight_decay(p["name"].get<std::string>()), p["decay"]);
}

// Fed torch's (clipped) gradients, AdamW must reproduce torch's parameters and moments to the last bit.
TEST(OptimizerGolden, AdamWIsBitExactWithTorch) {
  const OptimGolden& g = golden();
  for (const json& run : g.meta["runs"]) {
    const std::string rn = run["name"];
    Model m(run, g);
    AdamW opt(m.slots, config_of(run));
    const int64_t steps = run["steps"];
    int64_t differing = 0;
    double max_rel = 0;
    for (int64_t s = 0; s < steps; ++s) {
      for (const ParamSlot& p : m.slots) {
        const std::vector<float> grad = g.row(rn + ".clipped_grad." + p.name, s);
        std::memcpy(p.grad, grad.data(), grad.size() * sizeof(float));
      }
      opt.step(run["lrs"][s].get<double>());
      for (size_t k = 0; k < m.slots.size(); ++k) {
        const ParamSlot& p = m.slots[k];
        for (const auto& [what, ours] : {std::pair{"value", static_cast<const float*>(p.value)},
                                         std::pair{"exp_avg", opt.exp_avg(k)},
                                         std::pair{"exp_avg_sq", opt.exp_avg_sq(k)}}) {
          const Diff d = compare(ours, g.row(rn + "." + what + "." + p.name, s));
          differing += d.differing;
          max_rel = std::max(max_rel, d.max_rel);
        }
      }
    }
    EXPECT_EQ(opt.step_count(), steps);
    EXPECT_EQ(differing, 0) << rn << ": elements differing from torch in any bit (max relative diff " << max_rel << ")";
  }
}

// The whole step as HF Trainer takes it: raw gradients, our clip_grad_norm, our schedule's lr, AdamW.
TEST(OptimizerGolden, ClipScheduleAndStepMatchTorch) {
  const OptimGolden& g = golden();
  for (const json& run : g.meta["runs"]) {
    const std::string rn = run["name"];
    Model m(run, g);
    AdamW opt(m.slots, config_of(run));
    const LrSchedule sched = schedule_of(run);
    EXPECT_EQ(sched.warmup_steps, run["warmup"].get<int64_t>());
    const std::vector<float> norms = g.row(rn + ".grad_norm");
    const int64_t steps = run["steps"];
    double worst_norm = 0, worst_grad = 0, worst_value = 0;
    int64_t clipped = 0, differing_values = 0;
    for (int64_t s = 0; s < steps; ++s) {
      for (const ParamSlot& p : m.slots) {
        const std::vector<float> grad = g.row(rn + ".grad." + p.name, s);
        std::memcpy(p.grad, grad.data(), grad.size() * sizeof(float));
      }
      const GradClip clip = clip_grad_norm(m.slots, run["max_norm"].get<double>());
      clipped += clip.clipped();
      worst_norm = std::max(worst_norm, std::abs(double(clip.total_norm) - norms[s]) / norms[s]);
      for (const ParamSlot& p : m.slots)
        worst_grad = std::max(worst_grad, compare(p.grad, g.row(rn + ".clipped_grad." + p.name, s)).max_rel);
      const double lr = sched.lr(s);
      EXPECT_EQ(lr, run["lrs"][s].get<double>()) << rn << " step " << s;
      opt.step(lr);
      for (const ParamSlot& p : m.slots) {
        const Diff d = compare(p.value, g.row(rn + ".value." + p.name, s));
        worst_value = std::max(worst_value, d.max_rel);
        differing_values += d.differing;
      }
    }
    EXPECT_EQ(clipped, run["clipped_steps"].get<int64_t>()) << rn;
    // Bit-exact: the norm follows torch's float reduction order, the clip factor its reciprocal-then-multiply.
    EXPECT_EQ(worst_norm, 0.0) << rn;
    EXPECT_EQ(worst_grad, 0.0) << rn;
    EXPECT_EQ(differing_values, 0) << rn << " (max relative diff " << worst_value << ")";
    std::printf("[ figures  ] %s: grad norm max rel diff %.3g, clipped grads %.3g, params %.3g (%lld elements not "
                "bit-equal over %lld steps)\n",
                rn.c_str(), worst_norm, worst_grad, worst_value, static_cast<long long>(differing_values),
                static_cast<long long>(steps));
  }
}

TEST(Schedule, MatchesHuggingFaceLambdaLR) {
  for (const json& s : golden().meta["schedules"]) {
    LrSchedule sched;
    sched.kind = parse_schedule_kind(s["kind"].get<std::string>());
    sched.base_lr = s["base_lr"];
    sched.total_steps = s["total"];
    sched.warmup_steps = s.contains("warmup_steps") ? s["warmup_steps"].get<int64_t>()
                                                    : warmup_steps_from_ratio(sched.total_steps, s["warmup_ratio"]);
    EXPECT_EQ(sched.warmup_steps, s["warmup"].get<int64_t>()) << s.dump();
    sched.validate();
    for (size_t i = 0; i < s["steps"].size(); ++i) {
      const int64_t step = s["steps"][i];
      EXPECT_EQ(sched.lr(step), s["lrs"][i].get<double>()) << s["kind"] << " total " << sched.total_steps << " step " << step;
    }
  }
}

TEST(Schedule, WarmupFromRatioRoundsUpAsHF) {
  EXPECT_EQ(warmup_steps_from_ratio(4000, 0.04), 160);  // spec 3.4
  EXPECT_EQ(warmup_steps_from_ratio(20000, 0.04), 800);  // spec 3.5
  EXPECT_EQ(warmup_steps_from_ratio(100, 0.07), 8);      // 7.000000000000001 in double
  EXPECT_EQ(warmup_steps_from_ratio(10, 0.0), 0);
  EXPECT_THROW(warmup_steps_from_ratio(10, 1.5), Error);
  EXPECT_THROW(parse_schedule_kind("cosine_with_restarts"), Error);
  LrSchedule bad{ScheduleKind::Cosine, 1e-3, 0, 0};
  EXPECT_THROW(bad.validate(), Error);
  EXPECT_EQ(parse_schedule_kind("constant_with_warmup"), ScheduleKind::ConstantWithWarmup);
}

TEST(Optimizer, WeightDecayRuleByName) {
  for (const char* n : {"model.layers.3.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
                        "encoder.layers.0.mlp.down_proj.weight", "model.layers.31.cross_attn.k_proj.weight",
                        "lm_dense.weight"})
    EXPECT_TRUE(uses_weight_decay(n)) << n;
  for (const char* n : {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                        "model.layers.31.cross_attn.layernorm.weight", "model.norm.weight", "encoder.norm.weight",
                        "lm_layer_norm.weight", "lm_dense.bias", "lm_bias", "lm_head.bias"})
    EXPECT_FALSE(uses_weight_decay(n)) << n;
}

class OptimizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cepe-optim-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

void load_grads(const Model& m, const std::string& rn, int64_t s) {
  for (const ParamSlot& p : m.slots) {
    const std::vector<float> grad = golden().row(rn + ".grad." + p.name, s);
    std::memcpy(p.grad, grad.data(), grad.size() * sizeof(float));
  }
}

// N steps straight = k steps, save (optimizer state + parameters), load into a fresh optimizer, N - k steps.
TEST_F(OptimizerFiles, ResumeContinuesBitExactly) {
  const json& run = golden().meta["runs"][0];
  const std::string rn = run["name"];
  const int64_t steps = run["steps"], split = 13;
  const LrSchedule sched = schedule_of(run);
  auto train = [&](Model& m, AdamW& opt, int64_t from, int64_t to) {
    for (int64_t s = from; s < to; ++s) {
      load_grads(m, rn, s);
      clip_grad_norm(m.slots, 1.0);
      opt.step(sched.lr(s));
    }
  };
  Model straight(run, golden());
  AdamW a(straight.slots, config_of(run));
  train(straight, a, 0, steps);

  Model first(run, golden());
  AdamW b(first.slots, config_of(run));
  train(first, b, 0, split);
  b.save_state(path("optimizer.safetensors"));

  Model resumed(run, golden());
  for (auto& [name, v] : resumed.value) std::copy(first.value[name].begin(), first.value[name].end(), v.begin());  // the weights checkpoint
  AdamW c(resumed.slots, config_of(run));
  c.load_state(path("optimizer.safetensors"));
  EXPECT_EQ(c.step_count(), split);
  train(resumed, c, split, steps);

  EXPECT_EQ(c.step_count(), a.step_count());
  for (size_t k = 0; k < straight.slots.size(); ++k) {
    const std::string& n = straight.slots[k].name;
    const size_t count = straight.value[n].size();
    EXPECT_EQ(std::memcmp(straight.value[n].data(), resumed.value[n].data(), count * sizeof(float)), 0) << n;
    EXPECT_EQ(std::memcmp(a.exp_avg(k), c.exp_avg(k), count * sizeof(float)), 0) << n;
    EXPECT_EQ(std::memcmp(a.exp_avg_sq(k), c.exp_avg_sq(k), count * sizeof(float)), 0) << n;
  }
}

TEST_F(OptimizerFiles, SavedStateLayout) {
  const json& run = golden().meta["runs"][1];
  Model m(run, golden());
  AdamW opt(m.slots, config_of(run));
  load_grads(m, run["name"], 0);
  opt.step(1e-3);
  opt.save_state(path("s.safetensors"));
  const SafeTensors st = SafeTensors::open(path("s.safetensors"));
  EXPECT_EQ(st.names().size(), 2 * m.slots.size());
  EXPECT_EQ(st.metadata().at("format"), "cepe.adamw");
  EXPECT_EQ(st.metadata().at("step"), "1");
  EXPECT_EQ(st.metadata().at("weight_decay"), "0.10000000000000001");
  EXPECT_EQ(st.metadata().at("decay.lm_dense.bias"), "0");
  EXPECT_EQ(st.info("exp_avg_sq.model.embed_tokens.weight").shape, (Shape{13, 7}));
  EXPECT_EQ(std::memcmp(st.get("exp_avg.lm_dense.bias").f32(), opt.exp_avg(2), 5 * sizeof(float)), 0);
}

// Every way a state file can be wrong gives one error naming the problem, and leaves the optimizer as it was.
TEST_F(OptimizerFiles, LoadValidatesEverything) {
  const json& run = golden().meta["runs"][0];
  Model m(run, golden());
  AdamW opt(m.slots, config_of(run));
  load_grads(m, run["name"], 0);
  opt.step(1e-4);
  opt.save_state(path("good.safetensors"));
  const SafeTensors good = SafeTensors::open(path("good.safetensors"));
  auto tensors = [&] {
    std::map<std::string, Tensor> t;
    for (const std::string& n : good.names()) t[n] = good.get(n).clone();
    return t;
  };
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  struct Case {
    const char* what;
    std::function<void(std::map<std::string, Tensor>&, std::map<std::string, std::string>&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"missing", [&](auto& t, auto&) { t.erase("exp_avg_sq." + q); }, "missing tensor 'exp_avg_sq.model.layers.0"},
      {"extra", [&](auto& t, auto&) { t["exp_avg.extra.weight"] = Tensor::zeros(DType::F32, {2}); },
       "unexpected tensor 'exp_avg.extra.weight'"},
      {"shape", [&](auto& t, auto&) { t["exp_avg." + q] = Tensor::zeros(DType::F32, {16, 8}); },
       "has shape [16, 8], but parameter 'model.layers.0.self_attn.q_proj.weight' is [8, 16]"},
      {"dtype", [&](auto& t, auto&) { t["exp_avg." + q] = t["exp_avg." + q].to(DType::BF16); }, "is BF16, expected F32"},
      {"nan", [&](auto& t, auto&) { t["exp_avg." + q].f32()[5] = NAN; }, "holds NaN"},
      {"negative", [&](auto& t, auto&) { t["exp_avg_sq.lm_dense.bias"].f32()[3] = -1.0f; },
       "'exp_avg_sq.lm_dense.bias' holds a negative value at element 3"},
      {"step", [&](auto&, auto& md) { md["step"] = "-2"; }, "step '-2' is not an integer >= 0"},
      {"step text", [&](auto&, auto& md) { md["step"] = "3x"; }, "step '3x' is not an integer >= 0"},
      {"no step", [&](auto&, auto& md) { md.erase("step"); }, "metadata has no 'step'"},
      {"format", [&](auto&, auto& md) { md["format"] = "pt"; }, "format is 'pt', expected 'cepe.adamw'"},
      {"beta2", [&](auto&, auto& md) { md["beta2"] = "0.95"; }, "saved with beta2 = 0.95"},
      {"decay", [&](auto&, auto& md) { md["decay.lm_dense.bias"] = "1"; },
       "parameter 'lm_dense.bias' was saved with weight decay on, but is now off"},
  };
  std::vector<std::vector<float>> before;
  for (size_t k = 0; k < m.slots.size(); ++k) before.emplace_back(opt.exp_avg(k), opt.exp_avg(k) + m.slots[k].numel());
  for (const Case& c : cases) {
    auto t = tensors();
    auto md = good.metadata();
    c.edit(t, md);
    const std::string p = path(std::string("bad-") + c.what + ".safetensors");
    save_safetensors(p, t, md);
    try {
      opt.load_state(p);
      ADD_FAILURE() << c.what << ": loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << c.what << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << c.what << ": " << e.what();
    }
    EXPECT_EQ(opt.step_count(), 1) << c.what;
    for (size_t k = 0; k < m.slots.size(); ++k)
      EXPECT_EQ(std::memcmp(before[k].data(), opt.exp_avg(k), before[k].size() * sizeof(float)), 0) << c.what;
  }
  EXPECT_THROW(opt.load_state(path("does-not-exist.safetensors")), Error);
}

TEST(Optimizer, NonFiniteGradientNamesTheParameter) {
  std::vector<float> a(10, 1.0f), ga(10, 0.5f), b(4, 1.0f), gb(4, 0.5f);
  gb[2] = INFINITY;
  const std::vector<ParamSlot> slots{{"w", {10}, a.data(), ga.data(), true}, {"x.bias", {2, 2}, b.data(), gb.data(), false}};
  try {
    clip_grad_norm(slots, 1.0);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "gradient of 'x.bias' is not finite (+Inf at element 2 of [2, 2])");
  }
  gb[2] = NAN;
  EXPECT_THROW(global_grad_norm(slots), Error);
  EXPECT_EQ(ga[0], 0.5f);  // nothing was scaled
}

TEST(Optimizer, RejectsBadSlotsAndHyperParameters) {
  std::vector<float> v(4), g(4);
  EXPECT_THROW(AdamW({{"w", {4}, v.data(), g.data()}, {"w", {4}, v.data(), g.data()}}, {}), Error);
  EXPECT_THROW(AdamW({{"w", {4}, nullptr, g.data()}}, {}), Error);
  EXPECT_THROW(AdamW({{"", {4}, v.data(), g.data()}}, {}), Error);
  EXPECT_THROW(AdamW({{"w", {4}, v.data(), g.data()}}, {.beta1 = 1.0}), Error);
  EXPECT_THROW(AdamW({{"w", {4}, v.data(), g.data()}}, {.eps = -1}), Error);
  AdamW ok({{"w", {4}, v.data(), g.data()}}, {});
  EXPECT_THROW(ok.step(NAN), Error);
  EXPECT_THROW(clip_grad_norm(ok.params(), 0.0), Error);
}

TEST(Optimizer, AccumulationHelpers) {
  std::vector<float> v(3), g{3.0f, -6.0f, 1.5f};
  const std::vector<ParamSlot> slots{{"w", {3}, v.data(), g.data()}};
  EXPECT_EQ(accumulation_scale(4), 0.25f);
  scale_grads(slots, accumulation_scale(3));
  EXPECT_EQ(g, (std::vector<float>{1.0f, -2.0f, 0.5f}));
  const GradClip c = clip_grad_norm(slots, 10.0);  // norm sqrt(1 + 4 + 0.25) = 2.2913
  EXPECT_FLOAT_EQ(c.total_norm, std::sqrt(5.25f));
  EXPECT_FALSE(c.clipped());
  zero_grads(slots);
  EXPECT_EQ(g, (std::vector<float>(3, 0.0f)));
}

// Large tensors run on several threads: the update and the norm must not change with the thread count.
TEST(Optimizer, SameResultForAnyThreadCount) {
  const int64_t n = (1 << 17) + 37;
  std::mt19937 rng(7);
  std::normal_distribution<float> d;
  std::vector<float> init(n), grads(n);
  for (auto& x : init) x = d(rng);
  for (auto& x : grads) x = d(rng) * 1e-3f;
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> v = init, g = grads;
    const std::vector<ParamSlot> slots{{"big.weight", {n}, v.data(), g.data()}};
    AdamW opt(slots, {.weight_decay = 0.1});
    float norm = 0;
    for (int s = 0; s < 3; ++s) {
      norm = clip_grad_norm(slots, 1.0).total_norm;
      opt.step(1e-3);
    }
    omp_set_num_threads(saved);
    return std::pair{v, norm};
  };
  const auto one = run(1), four = run(4);
  EXPECT_EQ(std::memcmp(one.first.data(), four.first.data(), n * sizeof(float)), 0);
  EXPECT_EQ(std::bit_cast<uint32_t>(one.second), std::bit_cast<uint32_t>(four.second));
}

}  // namespace
}  // namespace cepe::train
