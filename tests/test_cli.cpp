// End-to-end tests of the `cepe` command-line tool: the real binary (CEPE_BINARY) is run under
// `timeout` with stdout/stderr redirected to files. Bad input must end in exactly one `error: ...`
// line on stderr and exit status 1, 2 for an unknown command (never a crash, a hang or a multi-line
// message); good input must reproduce the reference goldens of tests/data/cepe-tiny-a.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cepe/safetensors.h"
#include "cepe/tensor.h"
#include "cli_runner.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using namespace cepe::testing;

const fs::path kFixture = fs::path(CEPE_TEST_DATA) / "cepe-tiny-a";

json read_json(const fs::path& p) { return json::parse(read_text(p)); }

const json& golden() {
  static const json g = read_json(kFixture / "golden.json");
  return g;
}

std::map<std::string, cepe::Tensor> load_all(const fs::path& path) {
  const cepe::SafeTensors st = cepe::SafeTensors::open(path.string());
  std::map<std::string, cepe::Tensor> m;
  for (const std::string& n : st.names()) m[n] = st.get(n);
  return m;
}

// The scratch directory holds copies of the fixture: tests may corrupt their copies freely.
class CliTest : public CliScratchTest {
 protected:
  // A fresh copy of the fixture checkpoint (config.json, model.safetensors, tokenizer.model).
  std::string model_copy(const std::string& name = "model") {
    const fs::path m = dir_ / name;
    fs::create_directories(m);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"})
      fs::copy_file(kFixture / f, m / f, fs::copy_options::overwrite_existing);
    return m.string();
  }
  // The fixture itself, for tests that only read the checkpoint.
  static std::string fixture() { return kFixture.string(); }

  // golden.json `inputs` as a request file.
  std::string golden_request(const std::string& name = "req.json") {
    write_text(dir_ / name, golden()["inputs"].dump());
    return path(name);
  }
  std::string request(const json& j, const std::string& name = "req.json") {
    write_text(dir_ / name, j.dump());
    return path(name);
  }

  // `cepe forward` on a checkpoint with the golden request.
  RunResult forward_with_model(const std::string& model) {
    return run_cepe({"forward", "-m", model, "--request", golden_request(), "-o", path("out.json")});
  }
  // `cepe forward` on the fixture with a request.
  RunResult forward_request(const json& req) {
    return run_cepe({"forward", "-m", fixture(), "--request", request(req), "-o", path("out.json")});
  }
  RunResult generate_request(const json& req) {
    return run_cepe({"generate", "-m", fixture(), "--request", request(req), "-o", path("out.json"), "--greedy", "-n", "2"});
  }

  // Rewrites the copy's config.json after `edit`.
  template <class F>
  std::string model_with_config(F edit) {
    const std::string m = model_copy();
    json cfg = read_json(fs::path(m) / "config.json");
    edit(cfg);
    write_text(fs::path(m) / "config.json", cfg.dump(2));
    return m;
  }
  // Rewrites the copy's model.safetensors after `edit` on its tensors.
  template <class F>
  std::string model_with_tensors(F edit) {
    const std::string m = model_copy();
    auto tensors = load_all(kFixture / "model.safetensors");
    edit(tensors);
    cepe::save_safetensors((fs::path(m) / "model.safetensors").string(), tensors);
    return m;
  }
};

class CliErrors : public CliTest {};
class CliForward : public CliTest {};
class CliGenerate : public CliTest {};
class CliTokenize : public CliTest {};

json golden_inputs() { return golden()["inputs"]; }

// ---------------------------------------------------------------------------------------------------
// Checkpoint directory problems
// ---------------------------------------------------------------------------------------------------

TEST_F(CliErrors, TruncatedSafetensors) {
  const std::string full = read_text(kFixture / "model.safetensors");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(full[static_cast<size_t>(i)]);
  const size_t data_start = 8 + static_cast<size_t>(header_len);
  ASSERT_LT(data_start, full.size());
  const std::string m = model_copy();
  for (size_t cut : {size_t{0}, size_t{3}, size_t{7}, size_t{8}, size_t{9}, size_t{8 + 100}, data_start - 1, data_start,
                     data_start + 1, data_start + 4096, full.size() / 2, full.size() - 1}) {
    SCOPED_TRACE("cut at byte " + std::to_string(cut));
    write_text(fs::path(m) / "model.safetensors", full.substr(0, cut));
    EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors"}));
  }
  // Cut inside the data section: the message says why.
  write_text(fs::path(m) / "model.safetensors", full.substr(0, full.size() - 1));
  EXPECT_TRUE(CleanError(forward_with_model(m), {"truncated"}));
  write_text(fs::path(m) / "model.safetensors", full.substr(0, 4));
  EXPECT_TRUE(CleanError(forward_with_model(m), {"truncated"}));
}

TEST_F(CliErrors, CorruptedSafetensorsHeader) {
  const std::string full = read_text(kFixture / "model.safetensors");
  const std::string m = model_copy();
  const fs::path st = fs::path(m) / "model.safetensors";

  std::string bad = full;
  bad[8] = 'X';  // the opening brace of the header JSON
  write_text(st, bad);
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors", "JSON"}));

  bad = full;
  const size_t quote = bad.find("\"dtype\"");
  ASSERT_NE(quote, std::string::npos);
  bad[quote] = '\x01';  // control byte inside the JSON
  write_text(st, bad);
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors", "JSON"}));

  bad = full;
  const size_t f32 = bad.find("\"F32\"");
  ASSERT_NE(f32, std::string::npos);
  bad.replace(f32, 5, "\"Q99\"");  // unknown dtype
  write_text(st, bad);
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors", "dtype"}));

  // Header length larger than the file, and absurdly large.
  bad = full;
  bad[6] = '\x01';
  write_text(st, bad);
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors", "header length"}));
  bad = full;
  bad[7] = '\x7f';
  write_text(st, bad);
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors", "header length"}));

  // A header that is valid JSON but not an object.
  std::string header = "[1, 2, 3]";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string le(8, '\0');
  for (int i = 0; i < 8; ++i) le[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_text(st, le + header);
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors", "object"}));

  // Not a safetensors file at all.
  write_text(st, "this is not a checkpoint, just some text long enough\n");
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors"}));
}

TEST_F(CliErrors, MissingTensor) {
  for (const std::string name : {"model.layers.2.mlp.up_proj.weight", "lm_head.weight",
                                 "encoder.layers.1.self_attn.k_proj.weight", "model.layers.0.cross_attn.v_proj.weight",
                                 "model.norm.weight"}) {
    SCOPED_TRACE(name);
    const std::string m = model_with_tensors([&](auto& t) { ASSERT_EQ(t.erase(name), 1u); });
    EXPECT_TRUE(CleanError(forward_with_model(m), {"missing tensor", name}));
    fs::remove_all(m);
  }
}

TEST_F(CliErrors, TensorWithWrongShape) {
  {
    // [160, 64] expected; the transposed [64, 160] has the same size.
    const std::string m = model_with_tensors([](auto& t) {
      t["model.layers.1.mlp.up_proj.weight"] = cepe::Tensor::zeros(cepe::DType::F32, {64, 160});
    });
    EXPECT_TRUE(CleanError(forward_with_model(m), {"model.layers.1.mlp.up_proj.weight", "shape", "[64, 160]", "[160, 64]"}));
    fs::remove_all(m);
  }
  {
    const std::string m = model_with_tensors([](auto& t) {
      t["model.embed_tokens.weight"] = cepe::Tensor::zeros(cepe::DType::F32, {500, 64});
    });
    EXPECT_TRUE(CleanError(forward_with_model(m), {"model.embed_tokens.weight", "shape"}));
    fs::remove_all(m);
  }
  {
    const std::string m = model_with_tensors([](auto& t) {
      t["encoder.norm.weight"] = cepe::Tensor::zeros(cepe::DType::F32, {64, 1});
    });
    EXPECT_TRUE(CleanError(forward_with_model(m), {"encoder.norm.weight", "shape"}));
    fs::remove_all(m);
  }
  {
    // Right shape, integer dtype.
    const std::string m = model_with_tensors([](auto& t) {
      t["model.layers.0.self_attn.q_proj.weight"] = cepe::Tensor::zeros(cepe::DType::I32, {64, 64});
    });
    EXPECT_TRUE(CleanError(forward_with_model(m), {"model.layers.0.self_attn.q_proj.weight", "dtype"}));
    fs::remove_all(m);
  }
}

TEST_F(CliErrors, MissingCheckpointFiles) {
  std::string m = model_copy();
  fs::remove(fs::path(m) / "config.json");
  EXPECT_TRUE(CleanError(forward_with_model(m), {"config.json"}));

  m = model_copy("no-weights");
  fs::remove(fs::path(m) / "model.safetensors");
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors"}));

  m = model_copy("weights-dir");
  fs::remove(fs::path(m) / "model.safetensors");
  fs::create_directory(fs::path(m) / "model.safetensors");
  EXPECT_TRUE(CleanError(forward_with_model(m), {"model.safetensors"}));

  // Text mode needs the tokenizer.
  m = model_copy("no-tokenizer");
  fs::remove(fs::path(m) / "tokenizer.model");
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", m, "-p", "hi", "-n", "2", "--greedy"}), {"tokenizer"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", m, "hi"}), {"tokenizer"}));

  // A tokenizer.model that is not one.
  write_text(fs::path(m) / "tokenizer.model", "garbage");
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", m, "hi"}), {"tokenizer"}));
}

TEST_F(CliErrors, MalformedConfigJson) {
  const std::string m = model_copy();
  const fs::path cfg = fs::path(m) / "config.json";
  const std::string text = read_text(kFixture / "config.json");
  for (const std::string& bad : {text.substr(0, text.size() / 2), std::string("{\"vocab_size\": 512,}"), std::string(""),
                                 std::string("not json"), std::string("\xff\xfe{}")}) {
    SCOPED_TRACE(bad.substr(0, 40));
    write_text(cfg, bad);
    EXPECT_TRUE(CleanError(forward_with_model(m), {"config.json", "malformed JSON"}));
  }
  write_text(cfg, "[1, 2]");
  EXPECT_TRUE(CleanError(forward_with_model(m), {"config.json", "object"}));
}

TEST_F(CliErrors, UnknownConfigValues) {
  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    std::vector<std::string> keywords;
  };
  const std::vector<Case> cases = {
      {"hidden_act", [](json& c) { c["hidden_act"] = "gelu"; }, {"hidden_act", "gelu"}},
      {"encoder hidden_act", [](json& c) { c["encoder_config"]["hidden_act"] = "relu"; }, {"encoder_config", "hidden_act"}},
      {"rope_scaling yarn", [](json& c) { c["rope_scaling"] = {{"type", "yarn"}, {"factor", 2}}; }, {"rope_scaling", "yarn"}},
      {"rope_scaling factor", [](json& c) { c["rope_scaling"] = {{"type", "linear"}, {"factor", 0.5}}; }, {"rope_scaling", "factor"}},
      {"rope_scaling no factor", [](json& c) { c["rope_scaling"] = {{"type", "linear"}}; }, {"rope_scaling", "factor"}},
      {"encode_mode", [](json& c) { c["encode_mode"] = "bogus"; }, {"encode_mode", "bogus"}},
      {"encode_mode N", [](json& c) { c["encode_mode"] = "with_query-x"; }, {"encode_mode"}},
      {"train_batch_mode", [](json& c) { c["train_batch_mode"] = "weird"; }, {"train_batch_mode"}},
      {"num_cross_attn_layers", [](json& c) { c["num_cross_attn_layers"] = 9; }, {"num_cross_attn_layers"}},
      {"heads", [](json& c) { c["num_attention_heads"] = 5; }, {"num_attention_heads"}},
      {"zero layers", [](json& c) { c["num_hidden_layers"] = 0; }, {"num_hidden_layers"}},
      {"negative vocab", [](json& c) { c["vocab_size"] = -1; }, {"vocab_size"}},
      {"no encoder_config", [](json& c) { c.erase("encoder_config"); }, {"encoder_config"}},
      {"encoder_hidden_size", [](json& c) { c["encoder_hidden_size"] = 32; }, {"encoder_hidden_size"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string m = model_with_config(c.edit);
    const RunResult r = forward_with_model(m);
    EXPECT_TRUE(CleanError(r, {"config.json"}));
    for (const std::string& k : c.keywords) EXPECT_NE(r.err.find(k), std::string::npos) << k << "\n" << r.err;
    fs::remove_all(m);
  }
}

TEST_F(CliErrors, WrongTypedConfigValues) {
  struct Case {
    const char* key;
    json value;
  };
  const std::vector<Case> cases = {{"num_hidden_layers", "four"}, {"hidden_size", 64.5},       {"vocab_size", json::array()},
                                   {"rms_norm_eps", "small"},     {"do_cross_attention", "yes"}, {"hidden_act", 1},
                                   {"rope_scaling", "linear"},    {"encode_mode", false},       {"encoder_config", 3}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    const std::string m = model_with_config([&](json& cfg) { cfg[c.key] = c.value; });
    const RunResult r = forward_with_model(m);
    EXPECT_TRUE(CleanError(r, {"config.json"}));
    // encoder_config: 3 is reported as "config must be a JSON object" of the encoder_config origin.
    EXPECT_NE(r.err.find(c.key), std::string::npos) << r.err;
    fs::remove_all(m);
  }
}

TEST_F(CliErrors, ControlCharactersStayOnOneLine) {
  // Strings echoed into messages (config values, request keys, options) must not break the line.
  // They are shown escaped.
  std::string m = model_with_config([](json& c) { c["hidden_act"] = "ge\nlu\r\x1b"; });
  EXPECT_TRUE(CleanError(forward_with_model(m), {"hidden_act", "ge\\nlu\\r\\x1b"}));
  json req = golden_inputs();
  req["bad\nkey"] = 1;
  EXPECT_TRUE(CleanError(forward_request(req), {"unknown field", "bad\\nkey"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "--x\ny"}), {"unknown option", "--x\\ny"}));
  EXPECT_TRUE(CleanUsageError(run_cepe({"for\nward"}), {"unknown command", "for\\nward"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "-c", path("two\nlines.txt"), "-n", "1"}),
                         {"two\\nlines.txt"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", path("no\nmodel"), "--request", golden_request(), "-o", path("o.json")}),
                         {"no\\nmodel"}));
}

TEST_F(CliErrors, NonexistentModelDir) {
  const std::string missing = path("no-such-model");
  EXPECT_TRUE(CleanError(forward_with_model(missing), {"no-such-model"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", missing, "-p", "hi", "-n", "1"}), {"no-such-model"}));
  EXPECT_TRUE(
      CleanError(run_cepe({"generate", "-m", missing, "--request", golden_request(), "-o", path("o.json")}), {"no-such-model"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", missing, "hi"}), {"no-such-model"}));
  // A file where the directory should be.
  EXPECT_TRUE(CleanError(forward_with_model((kFixture / "config.json").string()), {"config.json"}));
}

// ---------------------------------------------------------------------------------------------------
// Request problems
// ---------------------------------------------------------------------------------------------------

TEST_F(CliErrors, MalformedRequestJson) {
  for (const std::string& bad : {std::string("{\"input_ids\": [[1, 2]"), std::string(""), std::string("{'input_ids': [[1]]}"),
                                 std::string("{\"input_ids\": [[1, 2]]} trailing")}) {
    SCOPED_TRACE(bad);
    write_text(dir_ / "bad.json", bad);
    EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", path("bad.json"), "-o", path("o.json")}),
                           {"bad.json", "malformed JSON"}));
    EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "--request", path("bad.json"), "-o", path("o.json")}),
                           {"bad.json", "malformed JSON"}));
  }
  EXPECT_TRUE(CleanError(forward_request(json::array({1, 2})), {"JSON object"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", path("absent.json"), "-o", path("o.json")}),
                         {"absent.json"}));
  EXPECT_FALSE(fs::exists(dir_ / "o.json"));
}

TEST_F(CliErrors, MissingInputIds) {
  json req = golden_inputs();
  req.erase("input_ids");
  EXPECT_TRUE(CleanError(forward_request(req), {"input_ids"}));
  EXPECT_TRUE(CleanError(generate_request(req), {"input_ids"}));
  EXPECT_TRUE(CleanError(forward_request(json::object()), {"input_ids"}));
}

TEST_F(CliErrors, RaggedInputIds) {
  EXPECT_TRUE(CleanError(forward_request({{"input_ids", {{1, 2, 3}, {1, 2}}}}), {"input_ids", "ragged"}));
  EXPECT_TRUE(CleanError(generate_request({{"input_ids", {{1, 2}, {1, 2, 3}}}}), {"input_ids", "ragged"}));
  EXPECT_TRUE(CleanError(forward_request({{"input_ids", {1, 2, 3}}}), {"input_ids"}));  // rank 1
  EXPECT_TRUE(CleanError(forward_request({{"input_ids", {{{1}, {2}}}}}), {"input_ids"}));  // rank 3
  EXPECT_TRUE(CleanError(forward_request({{"input_ids", {{1, 2}, 3}}}), {"input_ids"}));
}

TEST_F(CliErrors, RaggedEncoderInputIds) {
  json req = golden_inputs();
  req.erase("encoder_attention_mask");
  req["encoder_input_ids"][0][1] = {1, 2, 3};
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids", "ragged"}));
  EXPECT_TRUE(CleanError(generate_request(req), {"encoder_input_ids", "ragged"}));
  req["encoder_input_ids"] = {{{1, 2}, {3, 4}}, {{1, 2}}};
  req["input_ids"] = {{1, 2}, {1, 2}};
  req.erase("attention_mask");
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids", "ragged"}));
  req["encoder_input_ids"] = {{1, 2}, {3, 4}};  // rank 2
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids"}));
}

TEST_F(CliErrors, AttentionMaskShapeMismatch) {
  json req = golden_inputs();
  req["attention_mask"] = {{1, 1, 1}};
  EXPECT_TRUE(CleanError(forward_request(req), {"attention_mask", "does not match"}));
  EXPECT_TRUE(CleanError(generate_request(req), {"attention_mask", "does not match"}));
  req = golden_inputs();
  req["encoder_attention_mask"] = {{{1, 1, 1, 1, 1, 1, 1, 1}}};
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_attention_mask", "does not match"}));
  req = golden_inputs();
  req.erase("encoder_input_ids");
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_attention_mask"}));
  req = golden_inputs();
  req["position_ids"] = {{0, 1, 2}};
  EXPECT_TRUE(CleanError(forward_request(req), {"position_ids", "does not match"}));
}

TEST_F(CliErrors, MaskValueNotZeroOrOne) {
  json req = golden_inputs();
  req["attention_mask"][0][3] = 2;
  EXPECT_TRUE(CleanError(forward_request(req), {"attention_mask", "0 or 1", "2"}));
  EXPECT_TRUE(CleanError(generate_request(req), {"attention_mask", "0 or 1"}));
  req["attention_mask"][0][3] = -1;
  EXPECT_TRUE(CleanError(forward_request(req), {"attention_mask", "0 or 1"}));
  req = golden_inputs();
  req["encoder_attention_mask"][0][2][5] = 2;
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_attention_mask", "0 or 1"}));
  req = golden_inputs();
  req["attention_mask"][0][3] = true;
  EXPECT_TRUE(CleanError(forward_request(req), {"attention_mask", "integer"}));
}

TEST_F(CliErrors, TokenIdOutOfRange) {
  for (int64_t bad : {int64_t{512}, int64_t{-1}, int64_t{100000}, int64_t{1} << 40}) {
    SCOPED_TRACE(bad);
    json req = golden_inputs();
    req["input_ids"][0][5] = bad;
    EXPECT_TRUE(CleanError(forward_request(req), {"input_ids", std::to_string(bad), "out of range"}));
    EXPECT_TRUE(CleanError(generate_request(req), {"input_ids", std::to_string(bad), "out of range"}));
    req = golden_inputs();
    req["encoder_input_ids"][0][1][7] = bad;
    EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids", std::to_string(bad), "out of range"}));
    EXPECT_TRUE(CleanError(generate_request(req), {"encoder_input_ids", std::to_string(bad), "out of range"}));
  }
  json req = golden_inputs();
  req["input_ids"][0][0] = 18446744073709551615ull;  // does not fit int64
  EXPECT_TRUE(CleanError(forward_request(req), {"input_ids", "out of range"}));
}

TEST_F(CliErrors, NonIntegerTokenId) {
  for (const json& bad : {json(1.5), json("a"), json(nullptr), json(true), json(3.0), json::object()}) {
    SCOPED_TRACE(bad.dump());
    json req = golden_inputs();
    req["input_ids"][0][2] = bad;
    EXPECT_TRUE(CleanError(forward_request(req), {"input_ids", "integer"}));
    EXPECT_TRUE(CleanError(generate_request(req), {"input_ids", "integer"}));
    req = golden_inputs();
    req["encoder_input_ids"][0][0][0] = bad;
    EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids", "integer"}));
  }
}

TEST_F(CliErrors, UnknownRequestField) {
  json req = golden_inputs();
  req["inputs_ids"] = {{1, 2}};
  EXPECT_TRUE(CleanError(forward_request(req), {"unknown field", "inputs_ids"}));
  EXPECT_TRUE(CleanError(generate_request(req), {"unknown field", "inputs_ids"}));
  // position_ids are a forward-only field.
  req = golden_inputs();
  req["position_ids"] = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  EXPECT_TRUE(CleanError(generate_request(req), {"position_ids"}));
  req["position_ids"][0][4] = -3;
  EXPECT_TRUE(CleanError(forward_request(req), {"position_ids", "out of range"}));
}

TEST_F(CliErrors, EncoderBatchMismatch) {
  json req = golden_inputs();
  req["input_ids"] = {req["input_ids"][0], req["input_ids"][0]};
  req["attention_mask"] = {req["attention_mask"][0], req["attention_mask"][0]};
  EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids", "batch"}));
  EXPECT_TRUE(CleanError(generate_request(req), {"encoder_input_ids", "batch"}));
}

TEST_F(CliErrors, EmptyArrays) {
  for (const json& ids : {json::array(), json::array({json::array()}), json::array({json::array(), json::array()})}) {
    SCOPED_TRACE(ids.dump());
    EXPECT_TRUE(CleanError(forward_request({{"input_ids", ids}}), {"input_ids", "empty"}));
    EXPECT_TRUE(CleanError(generate_request({{"input_ids", ids}}), {"input_ids", "empty"}));
  }
  json req = golden_inputs();
  req.erase("encoder_attention_mask");
  for (const json& enc : {json::array(), json::array({json::array()}), json::array({json::array({json::array()})})}) {
    SCOPED_TRACE(enc.dump());
    req["encoder_input_ids"] = enc;
    EXPECT_TRUE(CleanError(forward_request(req), {"encoder_input_ids", "empty"}));
    EXPECT_TRUE(CleanError(generate_request(req), {"encoder_input_ids", "empty"}));
  }
  req = golden_inputs();
  req["attention_mask"] = json::array();
  EXPECT_TRUE(CleanError(forward_request(req), {"attention_mask", "empty"}));
}

// ---------------------------------------------------------------------------------------------------
// Command-line problems
// ---------------------------------------------------------------------------------------------------

TEST_F(CliErrors, UnknownOption) {
  const std::string req = golden_request();
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", req, "-o", path("o.json"), "--bogus"}),
                         {"unknown option", "--bogus"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "-x"}), {"unknown option", "-x"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", fixture(), "--bogus=1", "hi"}), {"unknown option", "--bogus"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "--greedy=1"}), {"--greedy", "takes no value"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", req, "-o", path("o.json"), "extra"}),
                         {"unexpected argument", "extra"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "extra"}), {"unexpected argument", "extra"}));
}

TEST_F(CliErrors, MissingOptionValue) {
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m"}), {"-m", "needs a value"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "-n"}), {"-n", "needs a value"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "hi", "--model"}), {"--model", "needs a value"}));
  // Required options that are absent.
  const std::string req = golden_request();
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", req}), {"--output"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "--request", req, "-o", path("o.json")}), {"--model"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "-o", path("o.json")}), {"--request"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-p", "hi"}), {"--model"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "--request", req}), {"--output"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture()}), {"-p", "--request"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "hi"}), {"--model"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", fixture()}), {"TEXT"}));
  EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", fixture(), "a", "b"}), {"TEXT"}));
}

TEST_F(CliErrors, NonNumericValues) {
  const std::vector<std::string> base = {"generate", "-m", fixture(), "-p", "hi"};
  auto with = [&](std::initializer_list<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra);
    return a;
  };
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", "abc"})), {"--max-new-tokens", "abc", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", "3.5"})), {"--max-new-tokens", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", ""})), {"--max-new-tokens", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", "99999999999999999999999"})), {"--max-new-tokens", "out of range"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--temp", "hot"})), {"--temp", "not a number"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--top-k", "1e3"})), {"--top-k", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--seed", "x"})), {"--seed", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-t", "many"})), {"--threads", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--chunk-len", "big", "-c", (kFixture / "config.json").string()})),
                         {"--chunk-len", "not an integer"}));
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", golden_request(), "-o", path("o.json"), "-t", "x"}),
                         {"--threads", "not an integer"}));
}

TEST_F(CliErrors, OutOfRangeValues) {
  const std::vector<std::string> base = {"generate", "-m", fixture(), "-p", "hi"};
  auto with = [&](std::initializer_list<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra);
    return a;
  };
  EXPECT_TRUE(CleanError(run_cepe(with({"--top-p", "-0.5"})), {"--top-p"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--top-p", "0"})), {"--top-p"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--top-p", "1.5"})), {"--top-p"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--top-p", "nan"})), {"--top-p"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--temp", "-1"})), {"--temp"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--top-k", "-1"})), {"--top-k"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", "-1"})), {"--max-new-tokens"}));
  const std::string ctx = (kFixture / "config.json").string();
  EXPECT_TRUE(CleanError(run_cepe(with({"--chunk-len", "0", "-c", ctx})), {"--chunk-len"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"--chunk-len", "-4", "-c", ctx})), {"--chunk-len"}));
  // Absurd sizes fail fast instead of filling memory.
  EXPECT_TRUE(CleanError(run_cepe(with({"--chunk-len", "99999999999999", "-c", ctx})), {"--chunk-len"}));
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "--request", golden_request(), "-o", path("o.json"), "-n",
                                   "16777216", "--greedy"}),
                         {"max new tokens", "exceed the limit"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", "16777216", "--greedy"})), {"max new tokens", "exceed the limit"}));
  EXPECT_TRUE(CleanError(run_cepe(with({"-n", "99999999999", "--greedy"})), {"--max-new-tokens", "out of range"}));
}

TEST_F(CliErrors, RequestAndPromptTogether) {
  EXPECT_TRUE(CleanError(
      run_cepe({"generate", "-m", fixture(), "-p", "hi", "--request", golden_request(), "-o", path("o.json")}),
      {"-p", "--request"}));
  EXPECT_FALSE(fs::exists(dir_ / "o.json"));
}

TEST_F(CliErrors, UnknownSubcommand) {
  EXPECT_TRUE(CleanUsageError(run_cepe({"frobnicate"}), {"unknown command", "frobnicate"}));
  EXPECT_TRUE(CleanUsageError(run_cepe({"Forward", "-m", fixture()}), {"unknown command", "Forward"}));
  EXPECT_TRUE(CleanUsageError(run_cepe({""}), {"unknown command"}));
}

TEST_F(CliErrors, TokenizeInvalidUtf8) {
  for (const std::string& text : {std::string("\xff\xfe"), std::string("abc\xc3"), std::string("\xc0\xaf"),
                                  std::string("\xed\xa0\x80"), std::string("ok \x80 ok")}) {
    SCOPED_TRACE(::testing::PrintToString(text));
    EXPECT_TRUE(CleanError(run_cepe({"tokenize", "-m", fixture(), text}), {"UTF-8"}));
  }
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "\xff\xfe", "-n", "1"}), {"UTF-8"}));
}

TEST_F(CliErrors, MissingOrBadContextFile) {
  const std::string missing = path("missing.txt");
  EXPECT_TRUE(CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "-c", missing, "-n", "1"}), {"missing.txt"}));
  write_text(dir_ / "bad.txt", "fine text \xff\xfe then garbage");
  EXPECT_TRUE(
      CleanError(run_cepe({"generate", "-m", fixture(), "-p", "hi", "-c", path("bad.txt"), "-n", "1"}), {"bad.txt", "UTF-8"}));
}

TEST_F(CliErrors, UnwritableOutput) {
  const std::string req = golden_request();
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", req, "-o", path("no/such/dir/out.json")}),
                         {"out.json"}));
  fs::create_directory(dir_ / "taken");
  EXPECT_TRUE(CleanError(run_cepe({"forward", "-m", fixture(), "--request", req, "-o", path("taken")}), {"taken"}));
  // No temporary file is left behind.
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

// ---------------------------------------------------------------------------------------------------
// Successful runs against the goldens
// ---------------------------------------------------------------------------------------------------

std::vector<int64_t> shape_of(const json& j) {
  std::vector<int64_t> s;
  const json* cur = &j;
  while (cur->is_array()) {
    s.push_back(static_cast<int64_t>(cur->size()));
    if (cur->empty()) break;
    cur = &(*cur)[0];
  }
  return s;
}

// The index of the largest of the 512 logits (the fixture's vocabulary) in `row`; the first one on ties.
size_t argmax_of(const json& row) {
  size_t best = 0;
  for (size_t v = 1; v < 512; ++v)
    if (row[v].get<double>() > row[best].get<double>()) best = v;
  return best;
}

TEST_F(CliForward, MatchesGolden) {
  const std::string req = golden_request();
  fs::create_directory(dir_ / "out");
  const fs::path out = dir_ / "out" / "OUT.json";
  const RunResult r = run_cepe({"forward", "-m", fixture(), "--request", req, "-o", out.string(), "-t", "2"});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_TRUE(r.out.empty()) << r.out;

  // Only the output file, no leftover temporary.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_ / "out")) files.push_back(e.path().filename().string());
  EXPECT_EQ(files, std::vector<std::string>{"OUT.json"});

  const json j = read_json(out);
  ASSERT_TRUE(j.contains("logits"));
  ASSERT_TRUE(j.contains("encoder_hidden_states"));
  EXPECT_EQ(shape_of(j["logits"]), (std::vector<int64_t>{1, 12, 512}));
  EXPECT_EQ(shape_of(j["encoder_hidden_states"]), (std::vector<int64_t>{1, 3, 8, 64}));
  // Every row is complete (the shape walk above only follows the first elements).
  for (const auto& row : j["logits"][0]) ASSERT_EQ(row.size(), 512u);

  const json& want = golden()["outputs"]["logits_last_position"][0];
  ASSERT_EQ(want.size(), 512u);
  const json& got = j["logits"][0][11];
  double max_diff = 0;
  for (size_t v = 0; v < 512; ++v) max_diff = std::max(max_diff, std::fabs(got[v].get<double>() - want[v].get<double>()));
  EXPECT_LT(max_diff, 1e-4);

  // All positions: the argmax of every row and the first logits.
  const json& argmax = golden()["outputs"]["logits_argmax"][0];
  const json& first8 = golden()["outputs"]["logits_first8"][0];
  for (size_t t = 0; t < 12; ++t) {
    const json& row = j["logits"][0][t];
    EXPECT_EQ(argmax_of(row), argmax[t].get<size_t>()) << "position " << t;
    for (size_t v = 0; v < 8; ++v) EXPECT_NEAR(row[v].get<double>(), first8[t][v].get<double>(), 1e-4);
  }

  const json& enc_want = golden()["outputs"]["encoder_last_hidden_state"][0];
  double enc_diff = 0;
  for (size_t c = 0; c < 3; ++c)
    for (size_t t = 0; t < 8; ++t)
      for (size_t d = 0; d < 64; ++d)
        enc_diff = std::max(enc_diff, std::fabs(j["encoder_hidden_states"][0][c][t][d].get<double>() -
                                                 enc_want[c][t][d].get<double>()));
  EXPECT_LT(enc_diff, 1e-4);
}

TEST_F(CliForward, WithoutContext) {
  json req = golden_inputs();
  req.erase("encoder_input_ids");
  req.erase("encoder_attention_mask");
  const RunResult r = forward_request(req);
  ASSERT_TRUE(Succeeded(r));
  const json j = read_json(dir_ / "out.json");
  EXPECT_FALSE(j.contains("encoder_hidden_states"));
  EXPECT_EQ(shape_of(j["logits"]), (std::vector<int64_t>{1, 12, 512}));
  const json& argmax = golden()["outputs"]["logits_no_context_argmax"][0];
  for (size_t t = 0; t < 12; ++t)
    EXPECT_EQ(argmax_of(j["logits"][0][t]), argmax[t].get<size_t>()) << "position " << t;
}

TEST_F(CliGenerate, RequestGreedyMatchesGolden) {
  const std::string req = golden_request();
  fs::create_directory(dir_ / "out");
  const fs::path out = dir_ / "out" / "gen.json";
  const RunResult r =
      run_cepe({"generate", "-m", fixture(), "--request", req, "-o", out.string(), "--greedy", "-n", "8", "-t", "2"});
  ASSERT_TRUE(Succeeded(r));
  const json j = read_json(out);
  EXPECT_EQ(j["sequences"], golden()["generation"]["sequences"]);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_ / "out")) files.push_back(e.path().filename().string());
  EXPECT_EQ(files, std::vector<std::string>{"gen.json"});

  // --temp 0 is greedy too.
  const RunResult r0 = run_cepe({"generate", "-m", fixture(), "--request", req, "-o", out.string(), "--temp", "0", "-n", "8"});
  ASSERT_TRUE(Succeeded(r0));
  EXPECT_EQ(read_json(out)["sequences"], golden()["generation"]["sequences"]);

  // -n 0 returns the input.
  const RunResult rz = run_cepe({"generate", "-m", fixture(), "--request", req, "-o", out.string(), "-n", "0"});
  ASSERT_TRUE(Succeeded(rz));
  EXPECT_EQ(read_json(out)["sequences"], golden()["inputs"]["input_ids"]);
}

TEST_F(CliGenerate, TextMode) {
  const RunResult r = run_cepe({"generate", "-m", fixture(), "-p", "Hello", "-n", "5", "--greedy", "-t", "2"});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(r.out.rfind("Hello", 0), 0u) << r.out;
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_NE(r.err.find("decode:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("prefill:"), std::string::npos) << r.err;

  // Greedy is deterministic.
  const RunResult again = run_cepe({"generate", "-m", fixture(), "-p", "Hello", "-n", "5", "--greedy"});
  ASSERT_TRUE(Succeeded(again));
  EXPECT_EQ(again.out, r.out);

  // With a context file.
  write_text(dir_ / "ctx.txt", "CEPE encodes 16 context chunks in parallel. Hello world!");
  const RunResult c = run_cepe(
      {"generate", "-m", fixture(), "-p", "Hello", "-c", path("ctx.txt"), "--chunk-len", "8", "-n", "5", "--seed", "3"});
  ASSERT_TRUE(Succeeded(c));
  EXPECT_EQ(c.out.rfind("Hello", 0), 0u) << c.out;
  EXPECT_NE(c.err.find("decode:"), std::string::npos) << c.err;
}

TEST_F(CliTokenize, MatchesGolden) {
  for (const json& sample : golden()["tokenizer"]["samples"]) {
    const std::string text = sample["text"].get<std::string>();
    SCOPED_TRACE(text);
    auto line = [](const json& ids) {
      std::string s = "[";
      for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i].get<int64_t>());
      return s + "]\n";
    };
    const RunResult r = run_cepe({"tokenize", "-m", fixture(), text});
    ASSERT_TRUE(Succeeded(r));
    EXPECT_EQ(r.out, line(sample["ids_with_bos"]));
    EXPECT_TRUE(r.err.empty()) << r.err;
    const RunResult nb = run_cepe({"tokenize", "-m", fixture(), "--no-bos", text});
    ASSERT_TRUE(Succeeded(nb));
    EXPECT_EQ(nb.out, line(sample["ids"]));
  }
  const RunResult r =
      run_cepe({"tokenize", "-m", fixture(), "Hello world! CEPE encodes 16 context chunks in parallel."});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(r.out.rfind("[1, 437, ", 0), 0u) << r.out;
  // The tokenizer file itself may be given instead of the directory.
  const RunResult f = run_cepe({"tokenize", "-m", (kFixture / "tokenizer.model").string(), "Hello"});
  ASSERT_TRUE(Succeeded(f));
  EXPECT_EQ(f.out.rfind("[1, ", 0), 0u) << f.out;
}

}  // namespace
