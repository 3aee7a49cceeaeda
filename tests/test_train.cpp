// `cepe train`: each stage learns on a small model (the acceptance's learning checks, at test size), a resume
// after kill -9 reproduces the uninterrupted run's losses exactly, and bad configs end in one clear error with
// nothing overwritten.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "cepe/model.h"
#include "cepe/safetensors.h"
#include "cli_runner.h"
#include "golden.h"
#include "kernels/cpu/gemm.h"
#include "train/assemble.h"
#include "train/teacher.h"
#include "train/token_file.h"
#include "train/tokenize_corpus.h"
#include "train/trainer.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::CleanError;
using testing::data_dir;

std::string tiny_tokenizer() { return (fs::path(data_dir("cepe-tiny-a")) / "tokenizer.model").string(); }

// A token file of `docs` (ids of the tiny tokenizer's vocabulary, BOS/EOS added as `cepe data tokenize` does).
void write_tokens(const std::string& path, const std::vector<std::vector<int32_t>>& docs) {
  const TokenizerIdentity id = identify_tokenizer(tiny_tokenizer());
  TokenFileWriter w(path, id, {"synthetic"});
  for (const auto& d : docs) {
    std::vector<int32_t> ids = {id.bos_id};
    ids.insert(ids.end(), d.begin(), d.end());
    ids.push_back(id.eos_id);
    w.add_document(ids);
  }
  w.commit();
}

// A low-entropy language: 64 symbols (ids 10..73); the next one follows a fixed permutation 90% of the time.
std::vector<std::vector<int32_t>> markov_docs(int n, int len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> next(64);
  for (int i = 0; i < 64; ++i) next[static_cast<size_t>(i)] = (i * 37 + 11) % 64;
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < n; ++d) {
    std::vector<int32_t> doc;
    int cur = static_cast<int>(rng() % 64);
    for (int t = 0; t < len; ++t) {
      doc.push_back(10 + cur);
      cur = rng() % 10 == 0 ? static_cast<int>(rng() % 64) : next[static_cast<size_t>(cur)];
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

// Text of random lowercase words, tokenized by the tiny tokenizer: little to predict without a copy of it.
void write_random_text_tokens(const std::string& dir, const std::string& out, int docs, uint32_t seed) {
  std::mt19937 rng(seed);
  fs::create_directories(dir);
  for (int d = 0; d < docs; ++d) {
    std::string text(200 * 7, ' ');
    size_t at = 0;
    for (int w = 0; w < 200; ++w) {
      const int len = 2 + static_cast<int>(rng() % 5);
      for (int i = 0; i < len; ++i) text[at++] = static_cast<char>('a' + rng() % 26);
      ++at;  // the space
    }
    text.resize(at);
    char name[32];
    std::snprintf(name, sizeof name, "d%03d.txt", d);  // (g++ 12 warns falsely on "d" + to_string(d))
    testing::write_text(fs::path(dir) / name, text);
  }
  TokenizeOptions o;
  o.tokenizer = tiny_tokenizer();
  o.output = out;
  o.inputs = {dir};
  o.progress = Progress::Style::Quiet;
  tokenize_corpus(o);
}

double unigram_loss(const std::vector<std::vector<int32_t>>& train, const std::vector<std::vector<int32_t>>& held) {
  std::map<int32_t, double> count;
  double total = 0;
  for (const auto& d : train)
    for (int32_t t : d) count[t] += 1, total += 1;
  double loss = 0, n = 0;
  for (const auto& d : held)
    for (int32_t t : d) loss -= std::log((count[t] + 1) / (total + 64)), n += 1;
  return loss / n;
}

json decoder_config(int64_t vocab = 512) {
  return {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", vocab}, {"hidden_size", 64}, {"intermediate_size", 128},
          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5}};
}

json cepe_config() {
  json c = decoder_config();
  c["architectures"] = {"LlamaForCausalContextLM"};
  c["do_cross_attention"] = true;
  c["num_cross_attn_layers"] = 2;
  c["encoder_hidden_size"] = 64;
  c["encoder_config"] = {{"vocab_size", 512}, {"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 1},
                         {"num_attention_heads", 4}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-6}};
  return c;
}

class TrainTest : public testing::CliScratchTest {
 protected:
  void SetUp() override {
    CliScratchTest::SetUp();
    kernels::set_num_threads(1);  // deterministic and fair to the other test processes
  }
  json base(const std::string& stage, const json& model, const std::string& train, const std::string& held) {
    return {{"stage", stage},
            {"output_dir", path("run-" + stage)},
            {"model", model},
            {"data", {{"train", {{{"files", {train}}}}}, {"eval", {{{"files", {held}}}}}, {"seq_len", 32}}},
            {"batch_size", 8},
            {"steps", 60},
            {"seed", 3},
            {"optimizer", {{"lr", 3e-3}}},
            {"schedule", {{"kind", "cosine"}, {"warmup_ratio", 0.05}}},
            {"eval", {{"every", 60}, {"batches", 4}}},
            {"checkpoint", {{"keep_last", 1}}}};
  }
  train::TrainResult run(const json& cfg) {
    train::TrainOptions opt;
    opt.quiet = true;
    return train::run_training(train::parse_train_config(cfg, "test config"), opt);
  }
};

TEST_F(TrainTest, DecoderPretrainingGoesFarBelowTheUnigramLoss) {
  const auto tr = markov_docs(40, 400, 1), held = markov_docs(4, 400, 2);
  write_tokens(path("train.tokens"), tr);
  write_tokens(path("held.tokens"), held);
  json cfg = base("decoder", {{"config", decoder_config()}, {"seed", 1}}, path("train.tokens"), path("held.tokens"));
  const auto r = run(cfg);
  ASSERT_EQ(r.evals.size(), 2u);  // before the first step and at the end
  const double unigram = unigram_loss(tr, held);
  EXPECT_GT(r.evals.front().loss, 5.5);  // ~ln 512 at init
  // The source's entropy is ~0.6 nats/token; the unigram loss ~4.2.
  EXPECT_LT(r.evals.back().loss, 0.5 * unigram) << "unigram " << unigram;
  // The checkpoint is a model that `cepe forward`/`generate` load as it is.
  auto m = CepeModel::load(r.last_checkpoint);
  EXPECT_EQ(m->config().architecture, Architecture::CausalLM);
  EXPECT_TRUE(fs::exists(fs::path(r.last_checkpoint) / "tokenizer.model") == false);  // random init: no tokenizer given
}

TEST_F(TrainTest, MlmPretrainingLowersTheMaskedTokenLoss) {
  const auto tr = markov_docs(40, 400, 3), held = markov_docs(4, 400, 4);
  write_tokens(path("train.tokens"), tr);
  write_tokens(path("held.tokens"), held);
  json mc = decoder_config(513);  // + [MASK] = 512
  mc["architectures"] = {"LlamaForMLM"};
  mc["is_decoder"] = false;
  mc["tie_word_embeddings"] = true;  // as the reference's mlm_config.json
  json cfg = base("mlm", {{"config", mc}, {"seed", 2}}, path("train.tokens"), path("held.tokens"));
  cfg["steps"] = 200;
  cfg["eval"]["every"] = 200;
  const auto r = run(cfg);
  ASSERT_EQ(r.evals.size(), 2u);
  EXPECT_GT(r.evals.front().loss, 5.5);  // ~ln 513 at init
  // Masked tokens of this language follow from their neighbours: far below what their frequencies give.
  const double unigram = unigram_loss(tr, held);
  EXPECT_LT(r.evals.back().loss, 0.85 * unigram) << "unigram " << unigram;
}

TEST_F(TrainTest, WarmupReadsTheContextAndCepeTrainsOnlyItsSet) {
  // Random words: without the encoder little is predictable; with the duplicated context, a copy.
  write_random_text_tokens(path("train-text"), path("train.tokens"), 200, 5);
  write_random_text_tokens(path("held-text"), path("held.tokens"), 20, 6);
  json cfg = base("warmup", {{"config", cepe_config()}, {"seed", 4}}, path("train.tokens"), path("held.tokens"));
  cfg["data"]["n_ctx"] = 2;
  cfg["data"]["ctx_len"] = 16;
  cfg["steps"] = 300;
  cfg["eval"]["every"] = 300;
  cfg["optimizer"]["lr"] = 1e-2;
  cfg["trainable"] = "all";
  const auto r = run(cfg);
  ASSERT_EQ(r.evals.size(), 2u);
  const train::EvalRecord& e = r.evals.back();
  ASSERT_TRUE(e.loss_no_context.has_value());
  // At test size the stage runs, learns the tokens' statistics and starts to read the context; learning to copy
  // takes a longer run (docs/training.md has the full runs and their figures).
  EXPECT_LT(e.loss, 0.65 * r.evals.front().loss);
  EXPECT_LT(e.loss, *e.loss_no_context) << "with the duplicated context " << e.loss << ", without " << *e.loss_no_context;
  // The standard stage from that checkpoint: context = the 32 tokens before the decoder's 32.
  json c2 = base("cepe", {{"checkpoint", r.last_checkpoint}}, path("train.tokens"), path("held.tokens"));
  c2["data"]["train"][0]["layout"] = "concat";
  c2["data"]["eval"][0]["layout"] = "concat";
  c2["data"]["n_ctx"] = 2;
  c2["data"]["ctx_len"] = 16;
  c2["steps"] = 20;
  c2["eval"]["every"] = 20;
  const auto r2 = run(c2);
  ASSERT_EQ(r2.evals.size(), 2u);
  ASSERT_TRUE(r2.evals.back().loss_no_context.has_value());
  // Random words: the context (other words) cannot help much, and it must not hurt either. (Whether the loss
  // moves in 20 steps is at the level of float rounding here, so it is not asserted; docs/training.md has runs.)
  EXPECT_LT(r2.evals.back().loss, *r2.evals.back().loss_no_context + 0.05);
  // The standard stage trains the cross-attention and the encoder only: the decoder leaves it bit for bit.
  const SafeTensors before = SafeTensors::open((fs::path(r.last_checkpoint) / "model.safetensors").string());
  const SafeTensors after = SafeTensors::open((fs::path(r2.last_checkpoint) / "model.safetensors").string());
  ASSERT_EQ(before.names(), after.names());
  int changed = 0, kept = 0;
  for (const std::string& name : after.names()) {
    const Tensor a = before.get(name), b = after.get(name);
    ASSERT_EQ(a.nbytes(), b.nbytes()) << name;
    const bool same = std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
    const bool trainable = name.find("cross_attn") != std::string::npos || name.rfind("encoder.", 0) == 0;
    if (trainable) {
      EXPECT_FALSE(same) << name << " is trained in the cepe stage but did not move";
      changed += !same;
    } else {
      EXPECT_TRUE(same) << name << " is frozen in the cepe stage but changed";
      kept += same;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(changed, 0) << "no trainable tensor moved";
}

// model.init_from: a random model takes every same-named tensor of a checkpoint (an MLM encoder started from
// the decoder: its trunk, and the vocabulary rows the [MASK] token extends).
TEST_F(TrainTest, InitFromCopiesTheTensorsOfTheSameName) {
  const auto dec = CepeModel::create_random(parse_cepe_config(decoder_config(), "decoder"), 1);
  dec->save(path("dec"));
  json mc = decoder_config(513);
  mc["architectures"] = {"LlamaForMLM"};
  mc["is_decoder"] = false;
  mc["num_hidden_layers"] = 1;  // shallower than the decoder: its layer 1 is not read
  const CepeConfig mlm_cfg = parse_cepe_config(mc, "mlm");
  const auto mlm = CepeModel::create_random(mlm_cfg, 2);
  // embed_tokens, layer 0's 9 tensors, the final norm, lm_head
  EXPECT_EQ(train::init_from_checkpoint(*mlm, path("dec")), 12);
  mlm->save(path("mlm"));
  CepeModel::create_random(mlm_cfg, 2)->save(path("fresh"));
  const SafeTensors d = SafeTensors::open(path("dec") + "/model.safetensors");
  const SafeTensors m = SafeTensors::open(path("mlm") + "/model.safetensors");
  const SafeTensors f = SafeTensors::open(path("fresh") + "/model.safetensors");
  for (const std::string& name : m.names()) {
    const Tensor mt = m.get(name), ft = f.get(name);
    if (!d.has(name)) {  // the MLM head keeps its init
      EXPECT_EQ(std::memcmp(mt.raw(), ft.raw(), mt.nbytes()), 0) << name;
      continue;
    }
    const Tensor dt = d.get(name);
    ASSERT_LE(dt.nbytes(), mt.nbytes()) << name;
    EXPECT_EQ(std::memcmp(mt.raw(), dt.raw(), dt.nbytes()), 0) << name << " was not copied";
    if (dt.nbytes() < mt.nbytes()) {  // the [MASK] row keeps its init
      EXPECT_EQ(std::memcmp(mt.data<char>() + dt.nbytes(), ft.data<char>() + dt.nbytes(), mt.nbytes() - dt.nbytes()), 0) << name;
    }
  }
  EXPECT_TRUE(m.has("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(m.has("model.layers.1.self_attn.q_proj.weight"));
  // Another width is refused, naming the tensor and both shapes.
  json narrow = mc;
  narrow["hidden_size"] = 32;
  const auto other = CepeModel::create_random(parse_cepe_config(narrow, "narrow"), 3);
  try {
    train::init_from_checkpoint(*other, path("dec"));
    ADD_FAILURE() << "a 32-wide model took a 64-wide checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.embed_tokens.weight is [512, 64] there but [513, 32]"), std::string::npos) << e.what();
  }
}

TEST_F(TrainTest, CepedLowersItsKlToTheTeacher) {
  write_tokens(path("train.tokens"), markov_docs(40, 400, 11));
  write_tokens(path("held.tokens"), markov_docs(4, 400, 12));
  // The teacher: a decoder pretrained here, reading context + decoder tokens in its own window.
  const auto dec = run(base("decoder", {{"config", decoder_config()}, {"seed", 1}}, path("train.tokens"), path("held.tokens")));
  json cfg = base("ceped", {{"config", cepe_config()}, {"seed", 2}}, path("train.tokens"), path("held.tokens"));
  cfg["data"]["train"][0]["layout"] = "concat";
  cfg["data"]["eval"][0]["layout"] = "concat";
  cfg["data"]["n_ctx"] = 2;
  cfg["data"]["ctx_len"] = 16;
  cfg["data"]["teacher"] = path("teacher.st");
  cfg["loss"] = {{"kl_loss_cof", 2.0}, {"kl_loss_mode", "smooth_1e-6"}};
  cfg["trainable"] = "all";
  cfg["steps"] = 40;
  const train::TrainConfig tc = train::parse_train_config(cfg, "test config");
  train::TeacherOptions t;
  t.teacher = dec.last_checkpoint;
  t.output = path("teacher.st");
  t.samples = 40 * 8;
  t.top_k = 8;
  t.quiet = true;
  train::write_teacher_targets(tc, t);
  const auto r = run(cfg);
  ASSERT_EQ(r.steps.size(), 40u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += r.steps[static_cast<size_t>(i)].kl / 5, last += r.steps[static_cast<size_t>(35 + i)].kl / 5;
  EXPECT_GT(first, 0.5);  // a random student is far from the teacher
  EXPECT_LT(last, 0.5 * first) << "KL over the first 5 steps " << first << ", the last 5 " << last;
  // Targets must match the run's samples and cover them.
  cfg["seed"] = 4;
  EXPECT_THROW(run(cfg), Error);
  cfg["seed"] = 3;
  cfg["steps"] = 41;
  cfg["output_dir"] = path("run-ceped-2");
  EXPECT_THROW(run(cfg), Error);
}

// "recompute": true keeps only each layer's input and recomputes the rest in the backward: the same steps,
// to the bit (every trunk: the decoder with cross-attention and the trained encoder).
TEST_F(TrainTest, RecomputeGivesTheSameLosses) {
  write_random_text_tokens(path("train-text"), path("train.tokens"), 40, 9);
  write_random_text_tokens(path("held-text"), path("held.tokens"), 4, 10);
  std::vector<train::TrainResult> runs;
  for (bool recompute : {false, true}) {
    json cfg = base("warmup", {{"config", cepe_config()}, {"seed", 4}}, path("train.tokens"), path("held.tokens"));
    cfg["output_dir"] = path(recompute ? "run-recompute" : "run-plain");
    cfg["data"]["n_ctx"] = 2;
    cfg["data"]["ctx_len"] = 16;
    cfg["steps"] = 4;
    cfg["eval"]["every"] = 4;
    cfg["trainable"] = "all";
    cfg["recompute"] = recompute;
    runs.push_back(run(cfg));
  }
  ASSERT_EQ(runs[0].steps.size(), 4u);
  ASSERT_EQ(runs[1].steps.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(runs[0].steps[i].loss, runs[1].steps[i].loss) << "step " << i + 1;
    EXPECT_EQ(runs[0].steps[i].grad_norm, runs[1].steps[i].grad_norm) << "step " << i + 1;
  }
  EXPECT_EQ(runs[0].evals.back().loss, runs[1].evals.back().loss);
}

TEST_F(TrainTest, ResumeAfterKill9ReproducesTheLossesExactly) {
  write_tokens(path("train.tokens"), markov_docs(40, 400, 7));
  write_tokens(path("held.tokens"), markov_docs(4, 400, 8));
  auto config_file = [&](const std::string& name) {
    json cfg = base("decoder", {{"config", decoder_config()}, {"seed", 1}}, path("train.tokens"), path("held.tokens"));
    cfg["output_dir"] = path(name);
    cfg["steps"] = 40;
    cfg["eval"]["every"] = 10;
    cfg["checkpoint"] = {{"every", 5}, {"keep_last", 2}};
    testing::write_text(path(name + ".json"), cfg.dump());
    return path(name + ".json");
  };
  const auto straight = run_cepe({"train", "--config", config_file("a"), "-t", "1", "-q"});
  ASSERT_TRUE(testing::Succeeded(straight));

  // The same run, killed with SIGKILL once it has written a checkpoint (mid-run, between checkpoints), then resumed.
  const std::string cfg_b = config_file("b");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(CEPE_BINARY, CEPE_BINARY, "train", "--config", cfg_b.c_str(), "-t", "1", "-q", static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(fs::path(path("b")) / "checkpoint-15" / "trainer_state.json") &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run ended before it could be killed";
  const auto resumed = run_cepe({"train", "--config", cfg_b, "-t", "1", "-q", "--resume"});
  ASSERT_TRUE(testing::Succeeded(resumed));

  auto losses = [&](const std::string& dir) {
    std::vector<std::pair<int64_t, double>> out;
    std::ifstream in(fs::path(dir) / "log.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const json j = json::parse(line);
      out.push_back({j.at("step"), j.contains("loss") ? j["loss"].get<double>() : j.at("eval_loss").get<double>()});
    }
    return out;
  };
  const auto a = losses(path("a")), b = losses(path("b"));
  ASSERT_EQ(a.size(), 45u);  // 40 steps + 5 evals
  EXPECT_EQ(a, b) << "per-step losses after the resume differ from the uninterrupted run's";
  // The final checkpoints are identical too.
  EXPECT_EQ(testing::read_text(fs::path(path("a")) / "checkpoint-40" / "model.safetensors"),
            testing::read_text(fs::path(path("b")) / "checkpoint-40" / "model.safetensors"));

  // --stop-after: a clean stop with a checkpoint between the scheduled ones (step 12), then --resume; and a
  // second stop that lands on a scheduled checkpoint (12 + 8 = 20).
  const std::string cfg_c = config_file("c");
  const auto first = run_cepe({"train", "--config", cfg_c, "-t", "1", "-q", "--stop-after", "12"});
  ASSERT_TRUE(testing::Succeeded(first));
  EXPECT_TRUE(fs::exists(fs::path(path("c")) / "checkpoint-12" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(fs::path(path("c")) / "checkpoint-15"));
  const auto second = run_cepe({"train", "--config", cfg_c, "-t", "1", "-q", "--resume", "--stop-after", "8"});
  ASSERT_TRUE(testing::Succeeded(second));
  EXPECT_TRUE(fs::exists(fs::path(path("c")) / "checkpoint-20" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(fs::path(path("c")) / "checkpoint-25"));
  ASSERT_TRUE(testing::Succeeded(run_cepe({"train", "--config", cfg_c, "-t", "1", "-q", "--resume"})));
  EXPECT_EQ(a, losses(path("c"))) << "per-step losses after --stop-after and --resume differ";
  EXPECT_EQ(testing::read_text(fs::path(path("a")) / "checkpoint-40" / "model.safetensors"),
            testing::read_text(fs::path(path("c")) / "checkpoint-40" / "model.safetensors"));
}

// A run whose tokenizer comes from its own resume checkpoint keeps writing it after keep_last has deleted that
// checkpoint (the default model's warmup once died at its first checkpoint after a resume).
TEST_F(TrainTest, ResumedRunKeepsItsTokenizerAfterTheSourceCheckpointIsPruned) {
  write_tokens(path("train.tokens"), markov_docs(8, 200, 11));
  write_tokens(path("held.tokens"), markov_docs(2, 200, 12));
  json first = base("decoder", {{"config", decoder_config()}, {"seed", 1}, {"tokenizer", tiny_tokenizer()}},
                    path("train.tokens"), path("held.tokens"));
  first["output_dir"] = path("first");
  first["steps"] = 2;
  run(first);
  const fs::path source = fs::path(path("first")) / "checkpoint-2";
  ASSERT_TRUE(fs::exists(source / "tokenizer.model"));

  json cfg = base("decoder", {{"checkpoint", source.string()}}, path("train.tokens"), path("held.tokens"));
  cfg["output_dir"] = path("second");
  cfg["steps"] = 12;
  cfg["checkpoint"] = {{"every", 3}, {"keep_last", 1}};
  train::TrainOptions opt;
  opt.quiet = true;
  opt.stop_after = 4;  // checkpoint-4 is the resume source; checkpoint-6 deletes it
  train::run_training(train::parse_train_config(cfg, "test config"), opt);
  opt.resume = true;
  opt.stop_after = 0;
  train::run_training(train::parse_train_config(cfg, "test config"), opt);
  const fs::path last = fs::path(path("second")) / "checkpoint-12";
  EXPECT_FALSE(fs::exists(fs::path(path("second")) / "checkpoint-4"));
  ASSERT_TRUE(fs::exists(last / "tokenizer.model"));
  EXPECT_EQ(testing::read_text(last / "tokenizer.model"), testing::read_text(tiny_tokenizer()));
}

TEST_F(TrainTest, ResumingAFinishedRunTrainsNothingAndRedrawsItsPlot) {
  write_tokens(path("train.tokens"), markov_docs(8, 200, 13));
  write_tokens(path("held.tokens"), markov_docs(2, 200, 14));
  json cfg = base("decoder", {{"config", decoder_config()}, {"seed", 1}}, path("train.tokens"), path("held.tokens"));
  cfg["steps"] = 4;
  const auto first = run(cfg);
  ASSERT_EQ(first.final_step, 4);
  const std::string state = testing::read_text(fs::path(first.last_checkpoint) / "trainer_state.json");
  train::TrainOptions opt;
  opt.quiet = true;
  opt.resume = true;
  opt.plot = path("again.png");
  const auto again = train::run_training(train::parse_train_config(cfg, "test config"), opt);
  EXPECT_EQ(again.final_step, 4);
  EXPECT_TRUE(again.steps.empty());
  EXPECT_EQ(testing::read_text(fs::path(first.last_checkpoint) / "trainer_state.json"), state);  // left as it was
  const std::string png = testing::read_text(path("again.png"));
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST(TrainPlot, LossFigureNamesTheRunAndDrawsTheTrailingMean) {
  train::TrainConfig c;
  c.stage = train::Stage::Cepe;
  c.output_dir = "work/runs/keys/";
  std::vector<std::pair<int64_t, double>> losses;
  for (int64_t s = 1; s <= 100; ++s) losses.push_back({s, s % 2 ? 3.0 : 1.0});  // noisy around 2
  std::vector<train::EvalRecord> evals(2);
  evals[0] = {0, 4.5, 4.6, 0};
  evals[1] = {100, 4.4, 4.6, 0};
  const plot::Figure f = train::loss_figure(c, losses, evals);
  EXPECT_EQ(f.title, "cepe train: keys (stage cepe)");
  EXPECT_TRUE(f.shared_legend);
  ASSERT_EQ(f.charts.size(), 1u);
  const auto& series = f.charts[0].series;
  ASSERT_EQ(series.size(), 4u);
  EXPECT_EQ(series[0].name, "train");
  EXPECT_EQ(series[0].y.size(), 100u);
  EXPECT_EQ(series[1].name, "held-out");
  EXPECT_EQ(series[1].y, (std::vector<double>{4.5, 4.4}));
  EXPECT_EQ(series[2].name, "held-out, no context");
  EXPECT_EQ(series[3].name, "train, 5-step mean");
  // From the 5th step on, each point the mean of the last 5 losses: 3 1 3 1 3 -> 2.2, then 1 3 1 3 1 -> 1.8.
  ASSERT_EQ(series[3].x.size(), 96u);
  EXPECT_EQ(series[3].x.front(), 5.0);
  EXPECT_NEAR(series[3].y[0], 2.2, 1e-12);
  EXPECT_NEAR(series[3].y[1], 1.8, 1e-12);
  EXPECT_EQ(series[3].x.back(), 100.0);

  // A run named as its stage, too short for a mean, without context evals: the stage alone, two series.
  c.stage = train::Stage::Decoder;
  c.output_dir = "runs/decoder";
  losses.resize(60);
  evals[0].loss_no_context.reset();
  evals[1].loss_no_context.reset();
  const plot::Figure d = train::loss_figure(c, losses, evals);
  EXPECT_EQ(d.title, "cepe train: decoder");
  ASSERT_EQ(d.charts[0].series.size(), 2u);
  EXPECT_EQ(d.charts[0].series[1].name, "held-out");
  EXPECT_NO_THROW(plot::render(d));
}

TEST_F(TrainTest, BadConfigsEndInOneErrorAndOverwriteNothing) {
  write_tokens(path("train.tokens"), markov_docs(4, 300, 9));
  const json good = base("decoder", {{"config", decoder_config()}}, path("train.tokens"), path("train.tokens"));
  auto try_config = [&](const json& cfg) {
    testing::write_text(path("cfg.json"), cfg.dump());
    return run_cepe({"train", "--config", path("cfg.json"), "-q"});
  };
  json c = good;
  c["optimizer"]["learning_rate"] = 1e-3;
  EXPECT_TRUE(CleanError(try_config(c), {"optimizer.learning_rate", "unknown key"}));
  c = good;
  c["model"] = {{"checkpoint", path("x")}, {"init_from", path("y")}};
  EXPECT_TRUE(CleanError(try_config(c), {"init_from goes with config"}));
  c = good;
  c["stage"] = "pretrain";
  EXPECT_TRUE(CleanError(try_config(c), {"stage", "pretrain"}));
  c = good;
  c["optimizer"]["lr"] = -1;
  EXPECT_TRUE(CleanError(try_config(c), {"optimizer.lr"}));
  c = good;
  c["model"]["config"]["vocab_size"] = 100;  // the token files hold ids of a 512-token tokenizer
  EXPECT_TRUE(CleanError(try_config(c), {"vocabulary"}));
  c = good;
  c["model"]["tokenizer"] = (fs::path(data_dir("ref-gqa")) / "config.json").string();  // not a tokenizer
  EXPECT_FALSE(testing::Succeeded(try_config(c)));
  {
    // A token file from another tokenizer (same vocabulary size, other pieces): refused, naming both hashes.
    TokenizerIdentity other = identify_tokenizer(tiny_tokenizer());
    other.sha256 = std::string(64, 'a');
    TokenFileWriter w(path("other.tokens"), other, {"other"});
    w.add_document(std::vector<int32_t>{other.bos_id, 20, 21, 22, other.eos_id});
    w.commit();
    c = good;
    c["model"]["tokenizer"] = tiny_tokenizer();
    c["data"]["train"][0]["files"] = {path("other.tokens")};
    EXPECT_TRUE(CleanError(try_config(c), {"other.tokens", std::string(64, 'a'), identify_tokenizer(tiny_tokenizer()).sha256}));
  }
  c = good;
  c["data"]["train"][0]["layout"] = "duplicate";
  EXPECT_TRUE(CleanError(try_config(c), {"layout", "decoder"}));
  // A checkpoint that does not match its config.
  const std::string bad_ckpt = path("bad-ckpt");
  fs::create_directories(bad_ckpt);
  fs::copy_file(fs::path(data_dir("ref-gqa")) / "model.safetensors", fs::path(bad_ckpt) / "model.safetensors");
  json wrong = json::parse(testing::read_text(fs::path(data_dir("ref-gqa")) / "config.json"));
  wrong["hidden_size"] = 96;
  testing::write_text(fs::path(bad_ckpt) / "config.json", wrong.dump());
  c = good;
  c["stage"] = "cepe";
  c["model"] = {{"checkpoint", bad_ckpt}};
  c["data"]["train"][0]["layout"] = "concat";
  c["data"]["eval"][0]["layout"] = "concat";
  c["data"]["n_ctx"] = 2;
  c["data"]["ctx_len"] = 8;
  EXPECT_TRUE(CleanError(try_config(c), {"shape"}));
  EXPECT_FALSE(fs::exists(path("run-decoder"))) << "a failed config must not create the output";

  // A corrupted resume state: nothing of the earlier run is touched.
  c = good;
  c["steps"] = 4;
  ASSERT_TRUE(testing::Succeeded(try_config(c)));
  const fs::path ck = fs::path(path("run-decoder")) / "checkpoint-4";
  const std::string before = testing::read_text(ck / "model.safetensors");
  testing::write_text(ck / "trainer_state.json", "{\"format\": \"cepe.trainer\", \"step\": ");
  EXPECT_TRUE(CleanError(run_cepe({"train", "--config", path("cfg.json"), "-q", "--resume"}), {"trainer_state.json"}));
  EXPECT_TRUE(CleanError(run_cepe({"train", "--config", path("cfg.json"), "-q"}), {"--resume"}));
  EXPECT_EQ(testing::read_text(ck / "model.safetensors"), before);
  // A token file from another tokenizer.
  testing::write_text(ck / "trainer_state.json", "");
}

}  // namespace
}  // namespace cepe
