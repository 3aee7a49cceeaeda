#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

#include "cepe/model.h"
#include "core/atomic_file.h"
#include "core/buffer_pool.h"
#include "core/interrupt.h"
#include "core/json_file.h"
#include "core/plot.h"
#include "core/progress.h"
#include "core/read_file.h"
#include "model/gradients.h"
#include "model/model_impl.h"
#include "train/assemble.h"
#include "train/comm.h"
#include "train/samplers.h"
#include "train/schedule.h"
#include "train/step.h"
#include "train/teacher.h"
#include "train/token_file.h"

namespace cepe::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::Decoder: return "decoder";
    case Stage::Mlm: return "mlm";
    case Stage::Warmup: return "warmup";
    case Stage::Cepe: return "cepe";
    case Stage::Ceped: return "ceped";
  }
  return "?";
}

namespace {

// A JSON object read key by key: wrong types and out-of-range values name the key's path, and done() refuses
// keys nobody read (a misspelt hyper-parameter must not be silently ignored).
class Obj {
 public:
  Obj(const json& j, std::string path, std::string origin) : j_(j), path_(std::move(path)), origin_(std::move(origin)) {
    if (!j.is_object()) fail("", "must be a JSON object, got " + json_excerpt(j));
  }
  bool has(const std::string& k) const { return j_.contains(k) && !j_.at(k).is_null(); }
  const json& raw(const std::string& k) {
    seen_.insert(k);
    return j_.at(k);
  }
  std::string str(const std::string& k, const std::string& def) {
    seen_.insert(k);
    if (!has(k)) return def;
    if (!j_.at(k).is_string()) fail(k, "must be a string, got " + json_excerpt(j_.at(k)));
    return j_.at(k).get<std::string>();
  }
  double num(const std::string& k, double def, double lo, double hi) {
    seen_.insert(k);
    if (!has(k)) return def;
    const json& v = j_.at(k);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo || v.get<double>() > hi)
      fail(k, "must be a number in [" + fmt(lo) + ", " + fmt(hi) + "], got " + json_excerpt(v));
    return v.get<double>();
  }
  int64_t integer(const std::string& k, int64_t def, int64_t lo, int64_t hi) {
    seen_.insert(k);
    if (!has(k)) return def;
    const json& v = j_.at(k);
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      fail(k, "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + json_excerpt(v));
    return v.get<int64_t>();
  }
  bool boolean(const std::string& k, bool def) {
    seen_.insert(k);
    if (!has(k)) return def;
    if (!j_.at(k).is_boolean()) fail(k, "must be true or false, got " + json_excerpt(j_.at(k)));
    return j_.at(k).get<bool>();
  }
  std::vector<std::string> strings(const std::string& k) {
    seen_.insert(k);
    std::vector<std::string> out;
    if (!has(k)) return out;
    const json& v = j_.at(k);
    if (v.is_string()) return {v.get<std::string>()};
    if (!v.is_array()) fail(k, "must be a string or a list of strings");
    for (const json& e : v) {
      if (!e.is_string()) fail(k, "must be a list of strings, got " + json_excerpt(e));
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  Obj sub(const std::string& k) {
    seen_.insert(k);
    static const json empty = json::object();
    return Obj(has(k) ? j_.at(k) : empty, key_path(k), origin_);
  }
  void done() const {
    for (const auto& [k, v] : j_.items())
      if (!seen_.count(k)) fail(k, "unknown key (see docs/training.md for the config's keys)");
  }
  [[noreturn]] void fail(const std::string& k, const std::string& msg) const {
    const std::string p = key_path(k);
    throw Error(origin_ + ": " + (p.empty() ? "config" : "key '" + p + "'") + " " + msg);
  }
  std::string key_path(const std::string& k) const { return path_.empty() ? k : k.empty() ? path_ : path_ + "." + k; }

 private:
  static std::string fmt(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return b;
  }
  const json& j_;
  std::string path_, origin_;
  std::set<std::string> seen_;
};

std::vector<StreamSpec> parse_streams(Obj& data, const std::string& key) {
  std::vector<StreamSpec> out;
  if (!data.has(key)) return out;
  const json& arr = data.raw(key);
  if (!arr.is_array() || arr.empty()) data.fail(key, "must be a non-empty list of streams {files, layout, ...}");
  for (size_t i = 0; i < arr.size(); ++i) {
    Obj s(arr[i], data.key_path(key) + "[" + std::to_string(i) + "]", "");
    StreamSpec st;
    st.files = s.strings("files");
    if (st.files.empty()) s.fail("files", "must name at least one token file");
    st.layout = s.str("layout", "");
    st.name = s.str("name", "");
    st.weight = s.num("weight", 0, 0, 1e9);
    st.prev_len = s.integer("prev_len", -1, -1, int64_t{1} << 40);
    st.window_len = s.integer("window_len", -1, -1, int64_t{1} << 40);
    st.stride = s.integer("stride", -1, -1, int64_t{1} << 40);
    st.min_context_chunks = s.integer("min_context_chunks", 0, 0, 1 << 20);
    s.done();
    out.push_back(std::move(st));
  }
  return out;
}

}  // namespace

TrainConfig parse_train_config(const json& j, const std::string& origin) {
  Obj o(j, "", origin);
  TrainConfig c;
  c.raw = j;
  const std::string stage = o.str("stage", "");
  bool known = false;
  for (Stage s : {Stage::Decoder, Stage::Mlm, Stage::Warmup, Stage::Cepe, Stage::Ceped})
    if (stage == stage_name(s)) c.stage = s, known = true;
  if (!known) o.fail("stage", "must be one of decoder, mlm, warmup, cepe, ceped; got '" + stage + "'");
  c.output_dir = o.str("output_dir", "");
  if (c.output_dir.empty()) o.fail("output_dir", "is required (where checkpoints and the log go)");
  {
    Obj m = o.sub("model");
    c.model.checkpoint = m.str("checkpoint", "");
    if (m.has("config")) c.model.config = m.raw("config");
    c.model.init_from = m.str("init_from", "");
    c.model.decoder = m.str("decoder", "");
    c.model.encoder = m.str("encoder", "");
    if (m.has("encoder_config")) c.model.encoder_config = m.raw("encoder_config");
    c.model.num_cross_attn_layers = m.integer("num_cross_attn_layers", 0, 0, 1 << 20);
    c.model.encode_mode = m.str("encode_mode", "context_only");
    c.model.init_mode = m.str("init_mode", c.stage == Stage::Warmup ? "copy" : "none");
    parse_cross_init(c.model.init_mode);
    c.model.seed = static_cast<uint64_t>(m.integer("seed", 0, 0, INT64_MAX));
    c.model.initializer_range = m.num("initializer_range", 0.02, 1e-8, 10);
    c.model.tokenizer = m.str("tokenizer", "");
    m.done();
    const int sources = !c.model.checkpoint.empty() + !c.model.config.is_null() + !c.model.decoder.empty();
    if (sources != 1) o.fail("model", "needs exactly one of checkpoint, config (random init) or decoder (+ encoder)");
    if (!c.model.init_from.empty() && c.model.config.is_null())
      o.fail("model", "init_from goes with config (a random model whose matching tensors it replaces)");
    if ((!c.model.encoder.empty() || !c.model.encoder_config.is_null()) && c.model.decoder.empty())
      o.fail("model", "encoder / encoder_config go with decoder (a CEPE assembly)");
  }
  const bool cepe = c.stage == Stage::Warmup || c.stage == Stage::Cepe || c.stage == Stage::Ceped;
  c.trainable = o.str("trainable", c.stage == Stage::Ceped ? "cross_attn" : cepe ? "cross_attn,encoder" : "all");
  TrainableSet ts;
  if (!parse_trainable_set(c.trainable, &ts)) o.fail("trainable", "must be " + trainable_set_names());
  {
    Obj d = o.sub("data");
    c.data.train = parse_streams(d, "train");
    c.data.eval = parse_streams(d, "eval");
    if (c.data.train.empty()) d.fail("train", "is required: a list of streams {files, layout}");
    c.data.seq_len = d.integer("seq_len", 0, 1, 1 << 20);
    if (c.data.seq_len == 0) d.fail("seq_len", "is required");
    c.data.n_ctx = d.integer("n_ctx", 0, 0, 1 << 20);
    c.data.ctx_len = d.integer("ctx_len", 0, 0, 1 << 20);
    c.data.loss_window = d.integer("loss_window", 0, 0, 1 << 20);
    c.data.mlm_probability = d.num("mlm_probability", 0.3, 0, 1);
    c.data.mask_id = static_cast<int32_t>(d.integer("mask_id", -1, -1, INT32_MAX));
    if (d.has("extra_special_ids")) {
      const json& ids = d.raw("extra_special_ids");
      if (!ids.is_array()) d.fail("extra_special_ids", "must be a list of token ids");
      for (const json& v : ids) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
          d.fail("extra_special_ids", "must be a list of token ids, got " + json_excerpt(v));
        c.data.extra_special_ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
      }
    }
    c.data.teacher = d.str("teacher", "");
    Obj cm = d.sub("context_masking");
    c.data.mask_prob = cm.num("mask_prob", 0, 0, 1);
    c.data.mask_seq_prob = cm.num("mask_seq_prob", 0, 0, 1);
    cm.done();
    d.done();
    const char* want = c.stage == Stage::Decoder ? "decoder" : c.stage == Stage::Mlm ? "mlm" : c.stage == Stage::Warmup ? "duplicate" : nullptr;
    for (std::vector<StreamSpec>* list : {&c.data.train, &c.data.eval})
      for (StreamSpec& s : *list) {
        if (s.layout.empty()) {
          if (!want) o.fail("data", std::string("streams of stage ") + stage_name(c.stage) + " must name their layout (filtered or concat)");
          s.layout = want;
        }
        const Layout l = parse_layout(s.layout);
        const bool ok = c.stage == Stage::Decoder ? l == Layout::Decoder
                        : c.stage == Stage::Mlm   ? l == Layout::Mlm
                                                  : layout_has_encoder(l);
        if (!ok) o.fail("data", "layout '" + s.layout + "' does not fit stage " + stage_name(c.stage));
      }
    if (cepe && (c.data.n_ctx <= 0 || c.data.ctx_len <= 0))
      o.fail("data", std::string("stage ") + stage_name(c.stage) + " needs n_ctx and ctx_len (the encoder's chunks)");
  }
  c.batch_size = o.integer("batch_size", 1, 1, 1 << 20);
  c.grad_accum = o.integer("grad_accum", 1, 1, 1 << 20);
  c.recompute = o.boolean("recompute", false);
  c.steps = o.integer("steps", 0, 1, int64_t{1} << 40);
  if (c.steps == 0) o.fail("steps", "is required (optimizer steps)");
  c.seed = static_cast<uint64_t>(o.integer("seed", 0, 0, INT64_MAX));
  {
    Obj op = o.sub("optimizer");
    c.lr = op.num("lr", 1e-4, 0, 10);
    c.adam.beta1 = op.num("beta1", 0.9, 0, 0.999999);
    c.adam.beta2 = op.num("beta2", 0.999, 0, 0.999999999);
    c.adam.eps = op.num("eps", 1e-8, 0, 1);
    c.adam.weight_decay = op.num("weight_decay", 0, 0, 10);
    c.max_grad_norm = op.num("max_grad_norm", 1.0, 0, 1e9);
    op.done();
  }
  {
    Obj sc = o.sub("schedule");
    c.schedule = sc.str("kind", "cosine");
    parse_schedule_kind(c.schedule);
    c.warmup_ratio = sc.num("warmup_ratio", 0, 0, 1);
    c.warmup_steps = sc.integer("warmup_steps", -1, -1, int64_t{1} << 40);
    sc.done();
  }
  {
    Obj l = o.sub("loss");
    c.lm_loss_cof = l.num("lm_loss_cof", 1.0, 0, 1e6);
    c.kl_loss_cof = l.num("kl_loss_cof", c.stage == Stage::Ceped ? 2.0 : 0.0, 0, 1e6);
    c.kl_loss_mode = l.str("kl_loss_mode", "drop");
    l.done();
  }
  {
    Obj e = o.sub("eval");
    c.eval_every = e.integer("every", 0, 0, int64_t{1} << 40);
    c.eval_batches = e.integer("batches", 4, 1, 1 << 20);
    c.eval_batch_size = e.integer("batch_size", 0, 0, 1 << 20);
    e.done();
  }
  {
    Obj k = o.sub("checkpoint");
    c.save_every = k.integer("every", 0, 0, int64_t{1} << 40);
    c.keep_last = k.integer("keep_last", 2, 1, 1 << 20);
    k.done();
  }
  {
    Obj l = o.sub("log");
    c.log_every = l.integer("every", 1, 1, int64_t{1} << 40);
    l.done();
  }
  o.done();
  if (c.stage == Stage::Ceped && c.data.teacher.empty())
    o.fail("data", "of stage ceped needs `teacher`: the teacher targets written by `cepe data teacher`");
  if (c.stage != Stage::Ceped && !c.data.teacher.empty()) o.fail("data.teacher", "is only read by stage ceped");
  if (c.stage == Stage::Ceped) {
    double delta = 0;
    parse_kl_mode(c.kl_loss_mode, origin + ": loss.kl_loss_mode", &delta);
  }
  return c;
}

TrainerState parse_trainer_state(const json& j, const std::string& origin) {
  auto bad = [&](const std::string& what) -> Error { return Error(origin + ": not a valid cepe trainer state: " + what); };
  if (!j.is_object() || !j.contains("format") || j["format"] != "cepe.trainer") throw bad("format is not cepe.trainer");
  if (!j.contains("step") || !j["step"].is_number_integer() || j["step"].get<int64_t>() < 0) throw bad("no step >= 0");
  if (!j.contains("config") || !j["config"].is_object()) throw bad("no config");
  TrainerState st;
  st.step = j["step"].get<int64_t>();
  st.config = j["config"];
  if (j.contains("history")) {
    const json& h = j["history"];
    if (!h.is_object()) throw bad("history is not an object");
    if (h.contains("train")) {
      if (!h["train"].is_array()) throw bad("history.train is not a list");
      for (const json& e : h["train"]) {
        if (!e.is_array() || e.size() != 2 || !e[0].is_number_integer() || !e[1].is_number())
          throw bad("history.train entries must be [step, loss]");
        st.train.push_back({e[0].get<int64_t>(), e[1].get<double>()});
      }
    }
    if (h.contains("eval")) {
      if (!h["eval"].is_array()) throw bad("history.eval is not a list");
      for (const json& e : h["eval"]) {
        if (!e.is_object() || !e.contains("step") || !e["step"].is_number_integer() || !e.contains("loss") ||
            !e["loss"].is_number() || (e.contains("loss_no_context") && !e["loss_no_context"].is_number()))
          throw bad("history.eval entries must be {step, loss[, loss_no_context]}");
        EvalRecord r;
        r.step = e["step"].get<int64_t>();
        r.loss = e["loss"].get<double>();
        if (e.contains("loss_no_context")) r.loss_no_context = e["loss_no_context"].get<double>();
        st.evals.push_back(r);
      }
    }
  }
  return st;
}

TrainConfig load_train_config(const std::string& path) {
  return parse_train_config(read_json_file(path, "training config"), path);
}

namespace {

constexpr const char* kStateFile = "trainer_state.json";

std::string checkpoint_name(int64_t step) { return "checkpoint-" + std::to_string(step); }

// Complete checkpoints (their trainer_state.json is written last) in output_dir, by step.
std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("checkpoint-", 0) != 0 || !e.is_directory()) continue;
    const std::string num = n.substr(11);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos || num.size() > 15) continue;
    if (!fs::exists(e.path() / kStateFile)) continue;
    out.push_back({std::stoll(num), e.path()});
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::shared_ptr<CepeModel> build_model(const TrainConfig& c) {
  const TrainConfig::Model& m = c.model;
  std::shared_ptr<CepeModel> model;
  if (!m.checkpoint.empty()) {
    model = CepeModel::load(m.checkpoint, LoadOptions{.owned_f32 = true});
    init_cross_attention(*model, parse_cross_init(m.init_mode), m.seed);
  } else if (!m.config.is_null()) {
    model = CepeModel::create_random(parse_cepe_config(m.config, "model.config"), m.seed, m.initializer_range);
    if (!m.init_from.empty()) init_from_checkpoint(*model, m.init_from);
  } else {
    CepeAssembly a;
    a.decoder = m.decoder;
    a.encoder = m.encoder;
    if (!m.encoder_config.is_null()) a.encoder_config = parse_llama_config(m.encoder_config, "model.encoder_config");
    a.num_cross_attn_layers = m.num_cross_attn_layers;
    a.encode_mode = m.encode_mode;
    a.init = parse_cross_init(m.init_mode);
    a.seed = m.seed;
    a.initializer_range = m.initializer_range;
    model = assemble_cepe(a);
  }
  return model;
}

void check_model_fits_stage(const TrainConfig& c, const CepeModel& model) {
  const CepeConfig& mc = model.config();
  const bool ok = c.stage == Stage::Decoder ? mc.architecture == Architecture::CausalLM
                  : c.stage == Stage::Mlm   ? mc.architecture == Architecture::MaskedLM
                                            : model.has_context_encoder();
  if (!ok)
    throw Error(std::string("stage ") + stage_name(c.stage) + " trains " +
                (c.stage == Stage::Decoder ? "a LlamaForCausalLM"
                 : c.stage == Stage::Mlm   ? "a LlamaForMLM"
                                           : "a CEPE model (cross-attention layers and an encoder)") +
                ", but the model is a " + architecture_name(mc.architecture) +
                (model.has_context_encoder() ? " with cross-attention" : ""));
}

}  // namespace

SamplerConfig make_sampler_config(const TrainConfig& c, bool train, int world, int rank, int64_t batch) {
  const std::vector<StreamSpec>& streams = train ? c.data.train : c.data.eval;
  SamplerConfig s;
  for (const StreamSpec& st : streams) {
    StreamConfig sc;
    sc.name = st.name;
    sc.layout = parse_layout(st.layout);
    for (const std::string& f : st.files) sc.files.push_back(std::make_shared<const TokenFile>(TokenFile::open(f)));
    sc.weight = st.weight;
    sc.prev_len = st.prev_len;
    sc.window_len = st.window_len;
    sc.stride = st.stride;
    sc.min_context_chunks = st.min_context_chunks;
    s.streams.push_back(std::move(sc));
  }
  s.seq_len = c.data.seq_len;
  s.n_ctx = c.data.n_ctx;
  s.ctx_len = c.data.ctx_len;
  s.seed = c.seed;
  s.shuffle = train;
  s.max_samples = train ? 0 : c.eval_batches * batch * world;
  s.loss_window = c.data.loss_window;
  s.mlm_probability = c.data.mlm_probability;
  s.mask_id = c.data.mask_id;
  s.extra_special_ids = c.data.extra_special_ids;
  if (train) s.context_masking = {c.data.mask_prob, c.data.mask_seq_prob};
  s.world_size = world;
  s.rank = rank;
  s.batch_size = batch;
  return s;
}

namespace {

// The token files must come from the model's tokenizer (when it has one) and fit its vocabularies: checked
// before the samplers cut them, so a file of another tokenizer is named as such.
void check_data_fits_model(const TrainConfig& c, const std::vector<StreamSpec>& streams, const CepeModel& model,
                           const std::string& tokenizer) {
  const CepeConfig& mc = model.config();
  std::optional<TokenizerIdentity> id;
  if (!tokenizer.empty()) id = identify_tokenizer(tokenizer);
  for (const StreamSpec& st : streams) {
    const Layout layout = parse_layout(st.layout);
    for (const std::string& path : st.files) {
      const TokenFile f = TokenFile::open(path);
      if (id) check_tokenizer(f, *id, tokenizer);
      const int64_t tv = f.tokenizer().vocab_size;
      const bool mlm = layout == Layout::Mlm && c.data.mask_id < 0;  // [MASK] = the tokenizer's vocab_size
      if (tv + (mlm ? 1 : 0) > mc.decoder.vocab_size)
        throw Error("training data: " + path + " holds ids of a " + std::to_string(tv) + "-token tokenizer" +
                    (mlm ? " (plus [MASK])" : "") + ", which do not fit the model's vocabulary of " +
                    std::to_string(mc.decoder.vocab_size));
      if (layout_has_encoder(layout) && tv > mc.encoder_trunk().vocab_size)
        throw Error("training data: " + path + " holds ids of a " + std::to_string(tv) +
                    "-token tokenizer, which do not fit the encoder's vocabulary of " +
                    std::to_string(mc.encoder_trunk().vocab_size));
    }
  }
}

struct BatchInput {
  std::vector<int64_t> labels;
  ContextChunks chunks;
  LossInput in;
};

BatchInput to_input(const Batch& b, bool with_context) {
  BatchInput x;
  x.labels.assign(b.labels.begin(), b.labels.end());
  x.in.ids = b.input_ids.data();
  x.in.batch = b.rows;
  x.in.len = b.seq_len;
  x.in.mask = b.attention_mask.data();
  x.in.labels = x.labels.data();
  if (with_context && b.has_encoder()) {
    x.chunks.batch = b.rows;
    x.chunks.n_ctx = b.n_ctx;
    x.chunks.ctx_len = b.ctx_len;
    x.chunks.ids = b.encoder_input_ids;
    x.chunks.mask = b.encoder_attention_mask;
  }
  return x;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace

plot::Figure loss_figure(const TrainConfig& c, const std::vector<std::pair<int64_t, double>>& train,
                         const std::vector<EvalRecord>& evals) {
  plot::Chart chart;
  // Named by the run (output_dir's last part) as well as the stage: several runs of one stage (cepe, cepe-long,
  // ...) make one model, and each plot must say which it is.
  fs::path dir = fs::path(c.output_dir).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // "runs/keys/"
  const std::string run = dir.filename().string();
  const std::string stage = stage_name(c.stage);
  const std::string title = "cepe train: " + (run.empty() || run == stage ? stage : run + " (stage " + stage + ")");
  chart.x.label = "optimizer step";
  chart.y.label = "loss (nats/token)";
  plot::Series tr{"train", {}, {}, false};
  for (const auto& [s, l] : train) tr.x.push_back(static_cast<double>(s)), tr.y.push_back(l);
  chart.series.push_back(tr);
  // Small batches of mixed data (retrieval documents next to text) make a per-step loss too noisy to read a
  // trend from: a trailing mean over a twentieth of the run goes with it.
  const size_t span = train.size() / 20;
  plot::Series mean{"train, " + std::to_string(span) + "-step mean", {}, {}, false};
  if (span >= 5) {
    double sum = 0;
    for (size_t i = 0; i < train.size(); ++i) {
      sum += train[i].second;
      if (i >= span) sum -= train[i - span].second;
      if (i + 1 >= span) mean.x.push_back(static_cast<double>(train[i].first)), mean.y.push_back(sum / double(span));
    }
  }
  plot::Series ev{"held-out", {}, {}, true};
  plot::Series nc{"held-out, no context", {}, {}, true};
  for (const EvalRecord& e : evals) {
    ev.x.push_back(static_cast<double>(e.step));
    ev.y.push_back(e.loss);
    if (e.loss_no_context) nc.x.push_back(static_cast<double>(e.step)), nc.y.push_back(*e.loss_no_context);
  }
  if (!ev.x.empty()) chart.series.push_back(ev);
  if (!nc.x.empty()) chart.series.push_back(nc);
  if (!mean.x.empty()) chart.series.push_back(mean);
  plot::Figure fig;
  fig.title = title;
  fig.charts.push_back(chart);
  fig.shared_legend = true;  // under the title, above the chart: inside it, the legend hid the held-out curves
  return fig;
}

TrainResult run_training(const TrainConfig& c, const TrainOptions& opt, Communicator* comm_in) {
  std::unique_ptr<Communicator> single;
  Communicator* comm = comm_in;
  if (!comm) {
    single = make_single_communicator();
    comm = single.get();
  }
  const int rank = comm->rank(), world = comm->size();
  const bool leader = rank == 0;
  const fs::path out_dir = c.output_dir;
  const auto existing = list_checkpoints(out_dir);
  if (!opt.resume && !existing.empty())
    throw Error(c.output_dir + ": holds checkpoints of an earlier run (" + existing.back().second.filename().string() +
                "): pass --resume to continue it, or choose another output_dir");

  // Everything is built and checked before anything is written.
  int64_t start_step = 0;
  std::shared_ptr<CepeModel> model;
  fs::path resume_from;
  std::optional<TrainerState> resumed_state;
  if (opt.resume && !existing.empty()) {
    resume_from = existing.back().second;
    const std::string state_path = (resume_from / kStateFile).string();
    resumed_state = parse_trainer_state(read_json_file(state_path, "trainer state"), state_path);
    start_step = resumed_state->step;
    if (start_step != existing.back().first || start_step > c.steps)
      throw Error(state_path + ": step " + std::to_string(start_step) + " does not match its checkpoint or the config's " +
                  std::to_string(c.steps) + " steps");
    if (resumed_state->config != c.raw)
      throw Error(c.output_dir + ": the run there used a different config; resume it with the same config (" +
                  (resume_from / "train_config.json").string() + ") or choose another output_dir");
    model = CepeModel::load(resume_from.string(), LoadOptions{.owned_f32 = true});
  } else {
    model = build_model(c);
  }
  check_model_fits_stage(c, *model);
  const CepeConfig& mc = model->config();
  TrainableSet set;
  parse_trainable_set(c.trainable, &set);
  const bool cepe = c.stage == Stage::Warmup || c.stage == Stage::Cepe || c.stage == Stage::Ceped;
  std::string tokenizer = c.model.tokenizer;
  if (tokenizer.empty()) {
    const std::string src = !resume_from.empty() ? resume_from.string() : !c.model.checkpoint.empty() ? c.model.checkpoint : c.model.decoder;
    if (!src.empty() && fs::exists(fs::path(src) / "tokenizer.model")) tokenizer = (fs::path(src) / "tokenizer.model").string();
  }
  check_data_fits_model(c, c.data.train, *model, tokenizer);
  check_data_fits_model(c, c.data.eval, *model, tokenizer);
  // Held in memory: after a resume the source is a checkpoint of this run, which keep_last may delete.
  const std::string tokenizer_bytes = tokenizer.empty() ? std::string() : read_file(tokenizer);
  Sampler train_data(make_sampler_config(c, true, world, rank, c.batch_size));
  const int64_t eval_batch = c.eval_batch_size > 0 ? c.eval_batch_size : c.batch_size;
  std::optional<Sampler> eval_data;
  if (!c.data.eval.empty()) {
    eval_data.emplace(make_sampler_config(c, false, world, rank, eval_batch));
  }
  std::optional<TeacherTargets> teacher;
  double kl_delta = 0;
  kernels::KlMode kl_mode = kernels::KlMode::Drop;
  if (c.stage == Stage::Ceped) {
    teacher.emplace(TeacherTargets::open(c.data.teacher, c, mc.decoder.vocab_size));
    kl_mode = parse_kl_mode(c.kl_loss_mode, "loss.kl_loss_mode", &kl_delta);
    const int64_t needed = c.steps * c.grad_accum * c.batch_size * world;
    if (needed > teacher->samples())
      throw Error(c.data.teacher + ": teacher targets for " + std::to_string(teacher->samples()) + " samples, the run needs " +
                  std::to_string(needed) + " (steps x grad_accum x batch_size x ranks): write more with `cepe data teacher --samples`");
  }
  ModelWeights grads = make_gradients(*model, set);
  std::vector<ParamSlot> slots = param_slots(*model, grads);
  const ScopedBufferPool pool;  // steps after the first reuse the first step's buffers
  AdamW adam(slots, c.adam);
  if (!resume_from.empty()) adam.load_state((resume_from / "optimizer.safetensors").string());
  LrSchedule sched;
  sched.kind = parse_schedule_kind(c.schedule);
  sched.base_lr = c.lr;
  sched.total_steps = c.steps;
  sched.warmup_steps = c.warmup_steps >= 0 ? c.warmup_steps : warmup_steps_from_ratio(c.steps, c.warmup_ratio);
  sched.validate();
  std::unique_ptr<GradientReducer> reducer;
  if (world > 1) reducer = std::make_unique<GradientReducer>(*comm, gradient_buffers(slots));

  // History (for the plot) comes back from the checkpoint; the log keeps only what that checkpoint covers.
  std::vector<std::pair<int64_t, double>> history;
  TrainResult result;
  if (resumed_state) {
    history = resumed_state->train;
    result.evals = resumed_state->evals;
  }
  const fs::path log_path = out_dir / "log.jsonl";
  std::FILE* log = nullptr;
  if (leader) {
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec) throw Error(c.output_dir + ": cannot create the output directory: " + ec.message());
    // Unfinished checkpoints of an interrupted save are dropped.
    for (const auto& e : fs::directory_iterator(out_dir))
      if (e.path().filename().string().rfind(".checkpoint-", 0) == 0) fs::remove_all(e.path(), ec);
    std::vector<std::string> keep;
    if (!resume_from.empty()) {
      std::ifstream in(log_path);
      std::string line;
      while (std::getline(in, line)) {
        try {
          const json j = json::parse(line);
          if (j.value("step", int64_t{0}) <= start_step) keep.push_back(line);
        } catch (const std::exception&) {
          break;  // a line cut by a kill: everything after it is newer than the checkpoint
        }
      }
    }
    std::string text;
    for (const std::string& l : keep) text += l + "\n";
    write_text_atomic(log_path.string(), text);
    log = std::fopen(log_path.c_str(), "a");
    if (!log) throw Error(log_path.string() + ": cannot open the log");
  }
  auto log_line = [&](const json& j) {
    if (!log) return;
    std::fputs((j.dump() + "\n").c_str(), log);
    std::fflush(log);
  };

  auto save = [&](int64_t step) {
    comm->barrier();
    if (leader) {
      const fs::path final_dir = out_dir / checkpoint_name(step);
      const fs::path tmp = out_dir / ("." + checkpoint_name(step) + ".tmp." + std::to_string(::getpid()));
      std::error_code ec;
      fs::remove_all(tmp, ec);
      model->save(tmp.string());
      adam.save_state((tmp / "optimizer.safetensors").string());
      if (!tokenizer.empty()) write_text_atomic((tmp / "tokenizer.model").string(), tokenizer_bytes);
      write_text_atomic((tmp / "train_config.json").string(), c.raw.dump(2) + "\n");
      json st;
      st["format"] = "cepe.trainer";
      st["version"] = 1;
      st["stage"] = stage_name(c.stage);
      st["step"] = step;
      // The data position: the samplers are pure functions of the global batch index (samplers.h).
      st["next_global_batch"] = step * c.grad_accum;
      st["world_size"] = world;
      st["config"] = c.raw;
      json h = json::array();
      for (const auto& [s, l] : history) h.push_back({s, l});
      json ev = json::array();
      for (const EvalRecord& e : result.evals) {
        json r = {{"step", e.step}, {"loss", e.loss}};
        if (e.loss_no_context) r["loss_no_context"] = *e.loss_no_context;
        ev.push_back(r);
      }
      st["history"] = {{"train", h}, {"eval", ev}};
      write_text_atomic((tmp / kStateFile).string(), st.dump() + "\n");  // last: marks the checkpoint complete
      fs::remove_all(final_dir, ec);
      fs::rename(tmp, final_dir);
      sync_parent_dir(final_dir.string());
      auto all = list_checkpoints(out_dir);
      for (size_t i = 0; i + static_cast<size_t>(c.keep_last) < all.size(); ++i) fs::remove_all(all[i].second, ec);
      result.last_checkpoint = final_dir.string();
    }
    comm->barrier();
  };

  // Eval: the held-out loss (token mean over every rank's windows), and for CEPE stages without context too.
  auto evaluate = [&](int64_t step) {
    if (!eval_data) return;
    EvalRecord rec;
    rec.step = step;
    for (bool with_context : cepe ? std::vector<bool>{true, false} : std::vector<bool>{true}) {
      double sums[2] = {0, 0};  // loss sum, scored positions
      for (int64_t g = 0; g < std::min(eval_data->num_batches(), c.eval_batches); ++g) {
        Batch b = eval_data->batch(g);
        if (b.rows == 0) continue;
        BatchInput x = to_input(b, with_context);
        if (x.chunks.batch > 0) x.in.context = &x.chunks;
        const int64_t n = scored_positions(mc, x.labels.data(), b.rows, b.seq_len);
        if (n == 0) continue;
        x.in.lm_loss_cof = 1.0;
        const LossValue v = loss_and_gradients(*model, x.in, set, nullptr);
        sums[0] += v.ce_sum;
        sums[1] += static_cast<double>(n);
      }
      comm->allreduce_sum(sums, 2);
      const double loss = sums[1] > 0 ? sums[0] / sums[1] : NAN;
      if (with_context) rec.loss = loss, rec.tokens = static_cast<int64_t>(sums[1]);
      else rec.loss_no_context = loss;
    }
    result.evals.push_back(rec);
    json j = {{"step", step}, {"event", "eval"}, {"eval_loss", rec.loss}, {"eval_tokens", rec.tokens}};
    if (rec.loss_no_context) j["eval_loss_no_context"] = *rec.loss_no_context;
    log_line(j);
    if (leader && !opt.plot.empty()) plot::write_png(opt.plot, loss_figure(c, history, result.evals));
  };

  DeferredInterrupt defer;
  Progress bar(std::string("train ") + stage_name(c.stage), c.steps, "steps", stderr,
               opt.quiet || !leader ? Progress::Style::Quiet : Progress::Style::Auto);
  bar.set_baseline(start_step);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_run = 0;
  if (start_step == 0 && c.eval_every > 0) evaluate(0);
  int64_t step = start_step;
  while (step < c.steps) {
    // One optimizer step: grad_accum micro-batches on every rank, one mean over all their scored positions.
    std::vector<Batch> micro;
    micro.reserve(static_cast<size_t>(c.grad_accum));  // the inputs below point into these batches
    std::vector<BatchInput> inputs;
    std::vector<int64_t> scored;
    double counts[3] = {0, 0, 0};  // scored positions, tokens, KL rows
    for (int64_t m = 0; m < c.grad_accum; ++m) {
      const Batch& b = micro.emplace_back(train_data.batch(step * c.grad_accum + m));
      inputs.push_back(to_input(b, true));
      scored.push_back(scored_positions(mc, inputs.back().labels.data(), b.rows, b.seq_len));
      counts[0] += static_cast<double>(scored.back());
      counts[1] += static_cast<double>(b.rows * (b.seq_len + b.n_ctx * b.ctx_len));
      if (teacher) counts[2] += static_cast<double>(b.rows * teacher->len());
    }
    comm->allreduce_sum(counts, 3);
    if (counts[0] == 0) throw Error("step " + std::to_string(step + 1) + ": no position of the batch is scored (labels all -100)");
    double sums[2] = {0, 0};  // Σ ce, Σ kl
    for (size_t m = 0; m < micro.size(); ++m) {
      const Batch& b = micro[m];
      BatchInput& x = inputs[m];
      if (x.chunks.batch > 0) x.in.context = &x.chunks;
      x.in.lm_loss_cof = c.lm_loss_cof;
      x.in.ce_normalizer = counts[0];
      x.in.recompute = c.recompute;
      Distillation ds;
      if (teacher) {
        ds.len = teacher->len();
        ds.k = teacher->k();
        ds.mode = kl_mode;
        ds.delta = kl_delta;
        ds.index.resize(static_cast<size_t>(b.rows * ds.len * ds.k));
        ds.prob.resize(static_cast<size_t>(b.rows * ds.len * (ds.k + 1)));
        for (int64_t r = 0; r < b.rows; ++r)
          teacher->fill(b.sample_index[static_cast<size_t>(r)], ds.index.data() + r * ds.len * ds.k,
                        ds.prob.data() + r * ds.len * (ds.k + 1));
        x.in.distill = &ds;
        x.in.kl_loss_cof = c.kl_loss_cof;
        x.in.kl_normalizer = counts[2];
      } else if (scored[m] == 0) {
        continue;  // nothing to learn from this micro-batch
      }
      const LossValue v = loss_and_gradients(*model, x.in, set, &grads);
      sums[0] += v.ce_sum;
      sums[1] += v.kl_sum;
    }
    // The gradient all-reduce runs after the backward (not overlapped with it): 2 ranks on loopback spend ~3%
    // of a step in it (docs/training.md, "Data parallelism"); its time is logged as allreduce_s.
    const auto reduce_t0 = std::chrono::steady_clock::now();
    if (reducer) reducer->reduce_all();
    comm->allreduce_sum(sums, 2);
    const double reduce_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - reduce_t0).count();
    const double lr = sched.lr(step);
    const GradClip clip = optimizer_update(slots, adam, c.max_grad_norm, lr);
    ++step;
    StepRecord rec;
    rec.step = step;
    rec.ce = sums[0] / counts[0];
    rec.kl = teacher ? sums[1] / counts[2] : 0.0;
    rec.loss = (cepe ? c.lm_loss_cof : 1.0) * rec.ce + (teacher ? c.kl_loss_cof * rec.kl : 0.0);
    rec.lr = lr;
    rec.grad_norm = clip.total_norm;
    result.steps.push_back(rec);
    history.push_back({step, rec.loss});
    tokens_run += static_cast<int64_t>(counts[1]);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step % c.log_every == 0 || step == c.steps) {
      json line{{"step", step}, {"loss", rec.loss}, {"ce", rec.ce}, {"kl", rec.kl}, {"lr", lr}, {"grad_norm", rec.grad_norm},
                {"tokens", static_cast<int64_t>(counts[1])}, {"tokens_per_s", elapsed > 0 ? tokens_run / elapsed : 0.0},
                {"elapsed_s", elapsed}};
      if (world > 1) line["allreduce_s"] = reduce_s;
      log_line(line);
    }
    bar.set_note("loss " + fmt("%.4f", rec.loss) + ", lr " + fmt("%.2e", lr) + ", " +
                 fmt("%.0f", elapsed > 0 ? tokens_run / elapsed : 0.0) + " tok/s");
    bar.update(step);
    if (c.eval_every > 0 && (step % c.eval_every == 0 || step == c.steps)) evaluate(step);
    // Every rank stops at the same step: an interrupt on any of them counts.
    const bool interrupted = comm->allgather(DeferredInterrupt::requested() != 0 ? 1 : 0) != std::vector<int64_t>(static_cast<size_t>(world), 0);
    const bool stop_here = opt.stop_after > 0 && step - start_step >= opt.stop_after;
    if ((c.save_every > 0 && step % c.save_every == 0) || step == c.steps || interrupted || stop_here) save(step);
    if (interrupted) {
      result.interrupted = true;
      break;
    }
    if (stop_here) break;
  }
  bar.finish();
  if (leader && !opt.plot.empty()) plot::write_png(opt.plot, loss_figure(c, history, result.evals));
  if (log) std::fclose(log);
  result.final_step = step;
  return result;
}

}  // namespace cepe::train
