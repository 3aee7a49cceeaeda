// `cepe init`: presets, config serialisation, the streaming safetensors writer, the random streams
// (determinism, statistics) and synthetic checkpoints that load and run.
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cepe/config.h"
#include "cepe/model.h"
#include "cepe/safetensors.h"
#include "core/half.h"
#include "core/progress.h"
#include "core/safetensors_writer.h"
#include "model/presets.h"
#include "model/random_init.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace cepe;

namespace {

// A fresh scratch directory per test, removed afterwards.
class InitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("cepe-init-" + std::to_string(::getpid()) + "-" + info->test_suite_name() + "-" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every field that parse_cepe_config fills.
void expect_same_trunk(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.pretraining_tp, b.pretraining_tp);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
}

void expect_same_config(const CepeConfig& a, const CepeConfig& b) {
  expect_same_trunk(a.decoder, b.decoder);
  EXPECT_EQ(a.has_encoder, b.has_encoder);
  if (a.has_encoder && b.has_encoder) expect_same_trunk(a.encoder, b.encoder);
  EXPECT_EQ(a.do_cross_attention, b.do_cross_attention);
  EXPECT_EQ(a.num_cross_attn_layers, b.num_cross_attn_layers);
  EXPECT_EQ(a.num_cross_attn_hidden_states, b.num_cross_attn_hidden_states);
  EXPECT_EQ(a.encoder_hidden_size, b.encoder_hidden_size);
  EXPECT_EQ(a.encoder_is_model, b.encoder_is_model);
  EXPECT_EQ(a.encode_mode, b.encode_mode);
  EXPECT_EQ(a.encode_query_tokens, b.encode_query_tokens);
  EXPECT_EQ(a.encode_mode_name, b.encode_mode_name);
  EXPECT_EQ(a.train_encoder, b.train_encoder);
  EXPECT_EQ(a.lm_loss_cof, b.lm_loss_cof);
  EXPECT_EQ(a.kl_loss_cof, b.kl_loss_cof);
  EXPECT_EQ(a.kl_loss_mode, b.kl_loss_mode);
  EXPECT_EQ(a.train_batch_mode, b.train_batch_mode);
  EXPECT_EQ(a.offload_hidden_states, b.offload_hidden_states);
}

InitOptions quiet(DType dtype = DType::F32, uint64_t seed = 0) {
  InitOptions o;
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

// Runs the real `cepe` binary through the shell; returns the exit status, stdout and stderr.
struct CliRun {
  int code = -1;
  std::string out, err;
};
CliRun run_cepe(const fs::path& scratch, const std::string& args) {
  const fs::path out = scratch / "cli.out", err = scratch / "cli.err";
  const std::string cmd = std::string("timeout 60 ") + CEPE_BINARY + " " + args + " >" + out.string() + " 2>" +
                          err.string() + " </dev/null";
  const int rc = std::system(cmd.c_str());
  CliRun r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = read_bytes(out);
  r.err = read_bytes(err);
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Presets and tensor lists

TEST(InitPresets, Llama2_7bHasTheReleasedShape) {
  const CepeConfig& c = preset_config("cepe-llama2-7b");
  EXPECT_EQ(c.decoder.hidden_size, 4096);
  EXPECT_EQ(c.decoder.num_hidden_layers, 32);
  EXPECT_EQ(c.decoder.intermediate_size, 11008);
  EXPECT_EQ(c.decoder.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.decoder.max_position_embeddings, 4096);
  EXPECT_FALSE(c.decoder.tie_word_embeddings);
  EXPECT_TRUE(c.do_cross_attention);
  EXPECT_EQ(c.num_cross_attn_layers, 32);
  EXPECT_EQ(c.encoder.hidden_size, 1024);
  EXPECT_EQ(c.encoder.num_hidden_layers, 24);
  EXPECT_EQ(c.encoder.num_attention_heads, 16);
  EXPECT_EQ(c.encoder.vocab_size, 32000);
  EXPECT_EQ(c.encoder.max_position_embeddings, 512);
  EXPECT_EQ(c.encoder.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.encoder_hidden_size, 1024);

  // spec §1.1 / §1.9: 8.516 B parameters in 669 tensors (451 decoder-side, 218 encoder-side).
  const std::vector<InitTensor> ts = checkpoint_tensors(c);
  EXPECT_EQ(ts.size(), 669u);
  size_t enc = 0;
  int64_t cross = 0, encoder_params = 0;
  for (const InitTensor& t : ts) {
    if (t.name.rfind("encoder.", 0) == 0) ++enc, encoder_params += shape_numel(t.shape);
    if (t.name == "model.layers.7.cross_attn.k_proj.weight") {
      EXPECT_EQ(t.shape, (Shape{4096, 1024}));
    }
    if (t.name.find(".cross_attn.") != std::string::npos) cross += shape_numel(t.shape);
  }
  EXPECT_EQ(enc, 218u);
  EXPECT_EQ(cross, 32 * 41947136LL);
  EXPECT_EQ(encoder_params, 435471360LL);
  EXPECT_EQ(parameter_count(c), 8516195328LL);
  EXPECT_EQ(checkpoint_file_bytes(c, DType::BF16) / 1000000000, 17u);  // 17.03 GB
}

TEST(InitPresets, SmallAndTiny) {
  const CepeConfig& s = preset_config("cepe-small");
  EXPECT_EQ(s.decoder.hidden_size, 768);
  EXPECT_EQ(s.decoder.num_hidden_layers, 12);
  EXPECT_EQ(s.decoder.num_attention_heads, 12);
  EXPECT_EQ(s.decoder.intermediate_size, 2048);
  EXPECT_EQ(s.num_cross_attn_layers, 12);
  EXPECT_EQ(s.encoder.hidden_size, 384);
  EXPECT_EQ(s.encoder.num_hidden_layers, 4);
  EXPECT_EQ(s.encoder.num_attention_heads, 6);
  EXPECT_EQ(s.encoder.intermediate_size, 1024);
  EXPECT_LT(parameter_count(preset_config("cepe-tiny")), 6000000);
  for (const ModelPreset& p : model_presets()) {  // every preset passes the config validation
    SCOPED_TRACE(p.name);
    EXPECT_NO_THROW(parse_cepe_config(cepe_config_to_json(p.config), p.name));
  }
}

TEST(InitPresets, UnknownNameListsTheKnownOnes) {
  try {
    preset_config("cepe-llama2-70b");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown preset 'cepe-llama2-70b'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cepe-small"), std::string::npos) << e.what();
  }
}

TEST(InitPresets, TensorListFollowsTheConfig) {
  CepeConfig c = preset_config("cepe-tiny");
  c.num_cross_attn_layers = 1;  // only the last layer
  c.decoder.tie_word_embeddings = true;
  std::map<std::string, Shape> names;
  for (const InitTensor& t : checkpoint_tensors(c)) names[t.name] = t.shape;
  EXPECT_FALSE(names.count("model.layers.0.cross_attn.q_proj.weight"));
  EXPECT_TRUE(names.count("model.layers.1.cross_attn.q_proj.weight"));
  EXPECT_FALSE(names.count("lm_head.weight"));
  EXPECT_EQ(names.at("model.layers.1.self_attn.k_proj.weight"), (Shape{32, 64}));  // GQA: 2 KV heads of 16
  EXPECT_EQ(names.at("model.layers.1.cross_attn.v_proj.weight"), (Shape{32, 32}));
  c.encoder_is_model = true;
  c.has_encoder = false;
  for (const InitTensor& t : checkpoint_tensors(c)) EXPECT_NE(t.name.rfind("encoder.", 0), 0u) << t.name;
}

// ---------------------------------------------------------------------------------------------------------
// config.json serialisation

TEST(InitConfig, PresetsRoundTrip) {
  for (const ModelPreset& p : model_presets()) {
    SCOPED_TRACE(p.name);
    const json j = cepe_config_to_json(p.config);
    EXPECT_EQ(j.at("architectures")[0], "LlamaForCausalContextLM");
    EXPECT_EQ(j.at("encoder_config").at("architectures")[0], "LlamaForMLM");
    EXPECT_EQ(j.at("hidden_act"), "silu");
    expect_same_config(parse_cepe_config(j, "x"), p.config);
  }
}

TEST(InitConfig, FixtureConfigsRoundTrip) {
  // Every reference fixture: load, serialise, parse again: the same config.
  int n = 0;
  for (const auto& e : fs::directory_iterator(CEPE_TEST_DATA)) {
    const fs::path cfg = e.path() / "config.json";
    if (!fs::exists(cfg)) continue;
    SCOPED_TRACE(cfg.string());
    const CepeConfig c = load_cepe_config(cfg.string());
    const json j = cepe_config_to_json(c);
    expect_same_config(parse_cepe_config(j, "x"), c);
    // HF key names: every key of the original file that the parser reads is present.
    const json orig = json::parse(read_bytes(cfg));
    for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "rms_norm_eps", "rope_theta", "do_cross_attention", "num_cross_attn_layers",
                            "encoder_hidden_size", "encode_mode"})
      if (orig.contains(key)) {
        EXPECT_EQ(j.at(key), orig.at(key)) << key;
      }
    ++n;
  }
  EXPECT_GE(n, 10);
}

TEST(InitConfig, RopeScalingPadAndTiedSurvive) {
  CepeConfig c = preset_config("cepe-tiny");
  c.decoder.rope_scaling = {RopeScalingType::Dynamic, 2.5};
  c.decoder.pad_token_id = 0;
  c.decoder.tie_word_embeddings = true;
  c.encode_mode = EncodeMode::WithQueryNoHid;
  c.encode_mode_name = "with_query_no_hid-4";
  c.encode_query_tokens = 4;
  c.kl_loss_mode = "drop";
  c.kl_loss_cof = 2.0;
  expect_same_config(parse_cepe_config(cepe_config_to_json(c), "x"), c);
}

// ---------------------------------------------------------------------------------------------------------
// Streaming safetensors writer

TEST_F(InitTest, WriterMatchesSaveSafetensorsByteForByte) {
  std::mt19937 rng(7);
  std::map<std::string, Tensor> tensors;
  const std::vector<std::pair<DType, Shape>> kinds = {{DType::F32, {3, 5}}, {DType::BF16, {7}}, {DType::I64, {2, 2}},
                                                      {DType::F16, {1, 3, 3}}, {DType::U8, {5}}, {DType::F32, {0, 4}},
                                                      {DType::I32, {}}, {DType::BF16, {4, 1}}};
  int i = 0;
  for (const auto& [dt, shape] : kinds) {
    Tensor t = Tensor::zeros(dt, shape);
    for (size_t b = 0; b < t.nbytes(); ++b) static_cast<uint8_t*>(t.raw())[b] = static_cast<uint8_t>(rng());
    tensors["t" + std::to_string(i++ * 7 % 10)] = t;
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"x", "y"}};
  save_safetensors((dir_ / "ref.safetensors").string(), tensors, meta);

  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, t.dtype(), t.shape()});
  std::reverse(specs.begin(), specs.end());  // the input order does not matter
  SafeTensorsWriter w((dir_ / "w.safetensors").string(), specs, meta);
  // The data in order(), cut into odd-sized pieces.
  std::string data;
  for (const TensorInfo& ti : w.order()) {
    const Tensor& t = tensors.at(ti.name);
    EXPECT_EQ(ti.end - ti.begin, t.nbytes());
    EXPECT_EQ(ti.begin % dtype_size(ti.dtype), 0u) << ti.name;
    data.append(static_cast<const char*>(t.raw()), t.nbytes());
  }
  for (size_t off = 0; off < data.size();) {
    const size_t n = std::min<size_t>(data.size() - off, 1 + rng() % 9);
    w.write(data.data() + off, n);
    off += n;
  }
  EXPECT_EQ(w.bytes_written(), w.file_bytes());
  EXPECT_FALSE(fs::exists(dir_ / "w.safetensors"));  // not before commit
  w.commit();
  EXPECT_EQ(read_bytes(dir_ / "w.safetensors"), read_bytes(dir_ / "ref.safetensors"));
  EXPECT_EQ(SafeTensors::open((dir_ / "w.safetensors").string()).names().size(), tensors.size());
}

TEST_F(InitTest, WriterErrorsAndCleanup) {
  const std::string path = (dir_ / "a.safetensors").string();
  {
    SafeTensorsWriter w(path, {{"a", DType::F32, {4}}});
    const float v[5] = {1, 2, 3, 4, 5};
    EXPECT_THROW(w.write(v, sizeof v), Error);  // past the end: fails and cleans up
    EXPECT_THROW(w.write(v, 4), Error);         // and stays failed
  }
  {
    SafeTensorsWriter w(path, {{"a", DType::F32, {4}}});
    const float v[2] = {1, 2};
    w.write(v, sizeof v);
    try {
      w.commit();
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("incomplete"), std::string::npos) << e.what();
    }
  }
  {
    SafeTensorsWriter w(path, {{"a", DType::F32, {4}}});  // abandoned: the temporary file goes
  }
  EXPECT_TRUE(fs::is_empty(dir_));
  EXPECT_THROW(SafeTensorsWriter(path, {{"a", DType::F32, {1}}, {"a", DType::F16, {1}}}), Error);
  EXPECT_THROW(SafeTensorsWriter(path, {{"__metadata__", DType::F32, {1}}}), Error);
  EXPECT_THROW(SafeTensorsWriter(path, {{"a", DType::F32, {-1}}}), Error);
  EXPECT_THROW(SafeTensorsWriter((dir_ / "no" / "such" / "dir.safetensors").string(), {{"a", DType::F32, {1}}}), Error);
  EXPECT_TRUE(fs::is_empty(dir_));
}

// ---------------------------------------------------------------------------------------------------------
// Random streams

TEST(InitRandom, NormalPairEdgeCases) {
  float z0 = 1, z1 = 1;
  // Largest u1 (1): radius exactly 0, whatever the sign of the zero on the way.
  init_normal_pair(0xFFFFFFFF00000000ull, &z0, &z1);
  EXPECT_EQ(z0, 0.0f);
  EXPECT_EQ(z1, 0.0f);
  // Smallest u1 (2^-32): the largest radius, sqrt(64 ln 2) = 6.66.
  init_normal_pair(0x0000000012345678ull, &z0, &z1);
  EXPECT_NEAR(std::hypot(z0, z1), 6.6604, 1e-3);
  // The angle covers the whole circle: quadrant bits pick the signs.
  for (uint32_t q = 0; q < 4; ++q) {
    init_normal_pair((0x4000000000000000ull) | (static_cast<uint64_t>(q) << 30) | 0x20000000u, &z0, &z1);
    const double a = std::atan2(z1, z0);
    const double expected = q * M_PI / 2;
    EXPECT_NEAR(std::remainder(a - expected, 2 * M_PI), 0.0, 1e-5) << q;
  }
}

TEST(InitRandom, AnySplitGivesTheSameValues) {
  const uint64_t key = init_stream_key(3, "model.layers.0.mlp.up_proj.weight");
  const int64_t n = 3 * kInitBlock + 123;
  std::vector<float> bulk(static_cast<size_t>(n)), pieces(static_cast<size_t>(n));
  init_normal(key, 0.02f, 0, n, bulk.data());
  std::mt19937 rng(1);
  for (int64_t off = 0; off < n;) {
    const int64_t len = std::min<int64_t>(n - off, 1 + rng() % 40000);
    init_normal(key, 0.02f, off, len, pieces.data() + off);
    off += len;
  }
  EXPECT_EQ(std::memcmp(bulk.data(), pieces.data(), bulk.size() * 4), 0);
  // Other seeds and names give other streams.
  std::vector<float> other(64);
  init_normal(init_stream_key(4, "model.layers.0.mlp.up_proj.weight"), 0.02f, 0, 64, other.data());
  EXPECT_NE(std::memcmp(bulk.data(), other.data(), 64 * 4), 0);
  init_normal(init_stream_key(3, "model.layers.0.mlp.gate_proj.weight"), 0.02f, 0, 64, other.data());
  EXPECT_NE(std::memcmp(bulk.data(), other.data(), 64 * 4), 0);
}

TEST(InitRandom, Statistics) {
  // 4 M values: mean 0, std 0.02 (to 1%), kurtosis 3, no value beyond the 6.7 sigma bound, lag-1 correlation ~0.
  const int64_t n = int64_t{1} << 22;
  std::vector<float> v(static_cast<size_t>(n));
  init_normal(init_stream_key(0, "stats"), 0.02f, 0, n, v.data());
  double s = 0, s2 = 0, s4 = 0, lag = 0, maxabs = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = v[static_cast<size_t>(i)] / 0.02;
    ASSERT_TRUE(std::isfinite(x)) << i;
    s += x, s2 += x * x, s4 += x * x * x * x;
    if (i) lag += x * v[static_cast<size_t>(i - 1)] / 0.02;
    maxabs = std::max(maxabs, std::fabs(x));
  }
  const double mean = s / n, var = s2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.005);
  EXPECT_NEAR(std::sqrt(var), 1.0, 0.01);
  EXPECT_NEAR(s4 / n, 3.0, 0.05);
  EXPECT_NEAR(lag / n, 0.0, 0.005);
  EXPECT_LT(maxabs, 6.7);
  EXPECT_GT(maxabs, 4.0);
  // The fraction within 1 sigma: 68.27%.
  int64_t within = 0;
  for (const float x : v) within += std::fabs(x) < 0.02f;
  EXPECT_NEAR(static_cast<double>(within) / n, 0.6827, 0.002);
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoints

TEST_F(InitTest, TinyCheckpointLoadsAndRuns) {
  const CepeConfig& cfg = preset_config("cepe-tiny");
  for (const DType dt : {DType::F32, DType::BF16, DType::F16}) {
    SCOPED_TRACE(dtype_name(dt));
    const fs::path d = dir_ / dtype_name(dt);
    const InitResult r = write_random_checkpoint(d.string(), cfg, quiet(dt));
    EXPECT_EQ(r.parameters, parameter_count(cfg));
    EXPECT_EQ(r.file_bytes, fs::file_size(d / "model.safetensors"));
    EXPECT_EQ(r.file_bytes, checkpoint_file_bytes(cfg, dt));

    // config.json round-trips and says what was written.
    expect_same_config(load_cepe_config((d / "config.json").string()), cfg);
    const json j = json::parse(read_bytes(d / "config.json"));
    EXPECT_EQ(j.at("torch_dtype"), dt == DType::F32 ? "float32" : dt == DType::BF16 ? "bfloat16" : "float16");

    const SafeTensors st = SafeTensors::open((d / "model.safetensors").string());
    EXPECT_EQ(st.names().size(), checkpoint_tensors(cfg).size());
    EXPECT_EQ(st.info("lm_head.weight").dtype, dt);
    EXPECT_EQ(st.metadata().at("format"), "pt");

    auto model = CepeModel::load(d.string());
    ContextChunks ch;
    ch.batch = 1, ch.n_ctx = 2, ch.ctx_len = 8;
    for (int i = 0; i < 16; ++i) ch.ids.push_back(100 + 37 * i), ch.mask.push_back(i < 13);
    EncodedContext ctx = model->encode(ch);
    const int32_t ids[5] = {1, 450, 4996, 17354, 29889};
    const int64_t pos[5] = {0, 1, 2, 3, 4};
    const Tensor logits = model->decode(ids, 1, 5, pos, nullptr, nullptr, &ctx);
    ASSERT_EQ(logits.shape(), (Shape{1, 5, 32000}));
    const float* l = logits.f32();
    double spread = 0;
    for (int64_t i = 0; i < logits.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(l[i])) << i;
      spread = std::max(spread, std::fabs(static_cast<double>(l[i] - l[0])));
    }
    EXPECT_GT(spread, 1e-3);  // not a constant
  }
}

TEST_F(InitTest, SameBytesForAnyThreadCountAndPieceSize) {
  const CepeConfig& cfg = preset_config("cepe-tiny");
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  write_random_checkpoint((dir_ / "t1").string(), cfg, quiet(DType::BF16, 5));
  omp_set_num_threads(2);
  InitOptions o = quiet(DType::BF16, 5);
  write_random_checkpoint((dir_ / "t2").string(), cfg, o);
  o.buffer_bytes = 12345;  // pieces that split tensors and blocks anywhere
  write_random_checkpoint((dir_ / "t2-small").string(), cfg, o);
  omp_set_num_threads(saved);
  const std::string a = read_bytes(dir_ / "t1" / "model.safetensors");
  EXPECT_GT(a.size(), 10000000u);
  EXPECT_TRUE(a == read_bytes(dir_ / "t2" / "model.safetensors"));
  EXPECT_TRUE(a == read_bytes(dir_ / "t2-small" / "model.safetensors"));
  EXPECT_EQ(read_bytes(dir_ / "t1" / "config.json"), read_bytes(dir_ / "t2" / "config.json"));
  // Another seed, other bytes.
  write_random_checkpoint((dir_ / "seed6").string(), cfg, quiet(DType::BF16, 6));
  EXPECT_FALSE(a == read_bytes(dir_ / "seed6" / "model.safetensors"));
}

TEST_F(InitTest, InitStatisticsLikeHuggingFace) {
  CepeConfig cfg = preset_config("cepe-tiny");
  cfg.decoder.pad_token_id = 0;  // nn.Embedding(padding_idx=0): row 0 is zero
  write_random_checkpoint(dir_.string(), cfg, quiet());
  const SafeTensors st = SafeTensors::open((dir_ / "model.safetensors").string());
  int norms = 0;
  double all_n = 0, all_s2 = 0;
  for (const std::string& name : st.names()) {
    const Tensor t = st.get(name);
    const float* p = t.f32();
    if (name.find("norm") != std::string::npos) {
      ++norms;
      for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(p[i], 1.0f) << name;
      continue;
    }
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < t.numel(); ++i) s += p[i], s2 += static_cast<double>(p[i]) * p[i];
    const double n = static_cast<double>(t.numel()), std = std::sqrt(s2 / n - (s / n) * (s / n));
    // Within 5 sampling standard errors (relative error of a std: 1/sqrt(2n); of a mean: std/sqrt(n)).
    EXPECT_NEAR(std / 0.02, 1.0, 5 / std::sqrt(2 * n)) << name << " (" << t.numel() << " values)";
    EXPECT_NEAR(s / n, 0.0, 5 * 0.02 / std::sqrt(n)) << name;
    all_n += n, all_s2 += s2;
  }
  EXPECT_NEAR(std::sqrt(all_s2 / all_n) / 0.02, 1.0, 0.01);  // all the normal weights: std 0.02 within 1%
  EXPECT_GT(all_n, 5e6);
  EXPECT_EQ(norms, 2 * 3 + 1 + 2 * 2 + 1);  // decoder: input/post/cross per layer + final; encoder: 2 per layer + final
  const Tensor emb = st.get("model.embed_tokens.weight");
  for (int64_t i = 0; i < 64; ++i) EXPECT_EQ(emb.f32()[i], 0.0f);
  EXPECT_NE(emb.f32()[64], 0.0f);
  // The layout is save_safetensors's: rewriting the loaded tensors gives the same file.
  std::map<std::string, Tensor> all;
  for (const std::string& name : st.names()) all[name] = st.get(name);
  save_safetensors((dir_ / "again.safetensors").string(), all, st.metadata());
  EXPECT_TRUE(read_bytes(dir_ / "again.safetensors") == read_bytes(dir_ / "model.safetensors"));
}

TEST_F(InitTest, RefusesToOverwriteWithoutOption) {
  const CepeConfig& cfg = preset_config("cepe-tiny");
  write_random_checkpoint(dir_.string(), cfg, quiet());
  try {
    write_random_checkpoint(dir_.string(), cfg, quiet());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos) << e.what();
  }
  InitOptions o = quiet(DType::BF16);
  o.overwrite = true;
  write_random_checkpoint(dir_.string(), cfg, o);
  EXPECT_EQ(SafeTensors::open((dir_ / "model.safetensors").string()).info("lm_head.weight").dtype, DType::BF16);
  for (const auto& e : fs::directory_iterator(dir_))  // no temporary file left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST_F(InitTest, FailsEarlyWhenTheDiskIsTooSmall) {
  CepeConfig cfg = preset_config("cepe-tiny");  // ~20 TB of f32
  cfg.decoder.hidden_size = 65536;
  cfg.decoder.intermediate_size = 262144;
  cfg.decoder.num_hidden_layers = cfg.num_cross_attn_layers = 64;
  ASSERT_GT(checkpoint_file_bytes(cfg, DType::F32), fs::space(dir_).available);
  try {
    write_random_checkpoint((dir_ / "huge").string(), cfg, quiet());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not enough disk space: the checkpoint needs"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "huge"));  // nothing created
}

// ---------------------------------------------------------------------------------------------------------
// Progress

TEST(InitProgress, LinesAndFormatting) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress p("write", 2000000000, "B", f, Progress::Style::Lines, 0.0);
    p.update(500000000);
    p.update(3000000000);  // clamped
    p.finish();
    p.finish();  // once only
    p.update(1);
  }
  std::rewind(f);
  std::string text;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f)) text += buf;
  std::fclose(f);
  EXPECT_NE(text.find("write: 25% 500.0 MB/2.00 GB"), std::string::npos) << text;
  EXPECT_NE(text.find("ETA"), std::string::npos) << text;
  EXPECT_NE(text.find("write: 2.00 GB in "), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3) << text;
  EXPECT_EQ(Progress::format_duration(65), "1:05");
  EXPECT_EQ(Progress::format_duration(3723), "1:02:03");
  EXPECT_EQ(Progress::format_bytes(17032390656.0), "17.03 GB");
  EXPECT_EQ(Progress::format_bytes(512), "512 B");
}

// ---------------------------------------------------------------------------------------------------------
// CLI

TEST_F(InitTest, CliWritesTinyAndReportsErrors) {
  const fs::path out = dir_ / "tiny";
  CliRun r = run_cepe(dir_, "init --preset cepe-tiny --dtype bf16 --seed 1 -o " + out.string());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("parameters"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("no tokenizer.model"), std::string::npos) << r.err;
  EXPECT_EQ(SafeTensors::open((out / "model.safetensors").string()).info("model.norm.weight").dtype, DType::BF16);
  expect_same_config(load_cepe_config((out / "config.json").string()), preset_config("cepe-tiny"));

  // --config: the written config.json is a valid input, and the same seed gives the same bytes.
  const fs::path again = dir_ / "again";
  r = run_cepe(dir_, "init --config " + (out / "config.json").string() + " --dtype bf16 --seed 1 -o " + again.string() +
                         " --tokenizer " + (fs::path(CEPE_TEST_DATA) / "cepe-tiny-a" / "tokenizer.model").string());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(read_bytes(out / "model.safetensors") == read_bytes(again / "model.safetensors"));
  EXPECT_TRUE(fs::exists(again / "tokenizer.model"));
  EXPECT_EQ(r.err.find("no tokenizer.model"), std::string::npos) << r.err;

  auto expect_error = [&](const std::string& args, const std::string& needle) {
    SCOPED_TRACE(args);
    const CliRun e = run_cepe(dir_, args);
    EXPECT_EQ(e.code, 1) << e.out << e.err;
    EXPECT_NE(e.err.find("error: "), std::string::npos) << e.err;
    EXPECT_NE(e.err.find(needle), std::string::npos) << e.err;
    EXPECT_EQ(std::count(e.err.begin(), e.err.end(), '\n'), 1) << e.err;
  };
  expect_error("init --preset nope -o " + (dir_ / "x").string(), "unknown preset 'nope'");
  expect_error("init --preset cepe-tiny --dtype f64 -o " + (dir_ / "x").string(), "unknown dtype 'f64'");
  expect_error("init --preset cepe-tiny -o " + out.string(), "already exists");
  expect_error("init -o " + (dir_ / "x").string(), "exactly one of --preset");
  expect_error("init --preset cepe-tiny --config x.json -o " + (dir_ / "x").string(), "exactly one of --preset");
  expect_error("init --preset cepe-tiny", "missing required option --output");
  // Unwritable: a directory under a regular file (root can write anywhere else).
  expect_error("init --preset cepe-tiny -o " + (out / "config.json" / "sub").string(), "cannot create the directory");
  json bad = json::parse(read_bytes(out / "config.json"));
  bad["num_attention_heads"] = 5;
  std::ofstream(dir_ / "bad.json") << bad.dump();
  expect_error("init --config " + (dir_ / "bad.json").string() + " -o " + (dir_ / "x").string(), "not divisible");
  EXPECT_FALSE(fs::exists(dir_ / "x"));

  r = run_cepe(dir_, "init --list");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("8,516,195,328"), std::string::npos) << r.out;
}
