#!/usr/bin/python3
"""Gradient goldens for `cepe grad`, computed by PyTorch autograd through the ORIGINAL CEPE reference.

The reference `modeling_llama_flash.py` is loaded exactly as make_goldens.py loads it (from the git
mirror at run time, imported unmodified, our transformers shim, eager attention everywhere).  For
every fixture this script

* builds a `cepe grad` request (request.json): the forward inputs + labels (+ CEPED distillation
  fields), exactly what a test passes to `cepe grad --request`;
* for each trainable set (all | cross_attn | cross_attn,encoder) sets `requires_grad` as the
  reference's train.py does, puts the model in train() mode, runs the reference forward with
  labels (and distill_index/distill_prob) and calls loss.backward();
* does this in float64 (the golden) and in float32 (self-check: loss within 1e-5 relative, every
  gradient within 2e-4 of its tensor's max |value|), checks the gradient names against the
  contract, checks that two float64 runs are bit-identical (nothing stochastic in train mode);
* writes grads-<set>.safetensors (F32: `loss` [1] + one tensor per trainable parameter) and
  golden.json.

Usage:  /usr/bin/python3 tests/reference/make_grad_goldens.py [--only NAME ...] [--out DIR] [--full]
(--full writes every trainable set of every fixture; the default writes the subset that fits the
repository's size budget, see README.md.)
"""
import argparse
import contextlib
import copy
import json
import os
import re
import sys

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_goldens as mg  # noqa: E402  (sets up the shim, torch, st_io)

np = mg.np
torch = mg.torch
st_io = mg.st_io
transformers = mg.transformers

REPO = mg.REPO
DATA = os.path.join(REPO, "tests", "data")
SHARED = os.environ.get("CEPE_SHARED", os.path.abspath(os.path.join(REPO, "..", "shared")))

SET_ARG = {"all": "all", "cross_attn": "cross_attn", "cross_attn+encoder": "cross_attn,encoder"}
SET_ORDER = ["all", "cross_attn", "cross_attn+encoder"]
LOSS_RTOL = 1e-5
GRAD_TOL = 2e-4  # of the tensor's max |value|
MASK_ID_NOTE = "[MASK] = vocab_size-1"

REF = None
REF_INFO = None


# ----------------------------------------------------------------------------
# model directories


def model_path(model_dir):
    if model_dir.startswith("shared:"):
        return os.path.join(SHARED, model_dir[len("shared:"):])
    return os.path.join(DATA, model_dir)


def arch_of(cfg):
    return cfg["architectures"][0]


def has_cross(cfg):
    return arch_of(cfg) == "LlamaForCausalContextLM" and cfg.get("do_cross_attention") and cfg.get("num_cross_attn_layers", 0) > 0


def build(cfg):
    a = arch_of(cfg)
    if a == "LlamaForCausalContextLM":
        return mg.build_model(cfg)
    c = dict(cfg)
    if a == "LlamaForCausalLM":
        # train.py (line 405) and eval_lm.py set config.is_decoder = True before building the model:
        # LlamaModel reads is_decoder in its __init__, BEFORE LlamaForCausalLM forces it to True, so a
        # config without it would give a bidirectional trunk.
        c["is_decoder"] = True
        model = REF.LlamaForCausalLM(transformers.LlamaConfig.from_dict(c))
        assert model.model.is_decoder
    elif a == "LlamaForMLM":
        assert c.get("is_decoder") is False  # train_mlm.py: config.is_decoder = False
        model = REF.LlamaForMLM(transformers.LlamaConfig.from_dict(c))
        assert not model.model.is_decoder
        assert model.lm_head.bias is model.lm_bias
    else:
        raise SystemExit(f"unknown architecture {a}")
    for m in model.modules():
        assert not isinstance(m, (REF.LlamaFlashAttention2, REF.LlamaCrossFlashAttention2)), "flash module built"
    model.eval()
    return model


def load(model, sd):
    tsd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(tsd, strict=False)
    allowed = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert not unexpected, unexpected
    assert set(missing) <= allowed, missing
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def fresh(cfg, sd, dtype):
    m = load(build(cfg), sd)
    if dtype == torch.float64:
        m.double()  # converts parameters in place: tied Parameters stay shared
    return m


@contextlib.contextmanager
def float64_masks(active):
    """float64 runs only.  Unwrapped, the reference cannot run in float64: _make_causal_mask does
    torch.full(..., finfo(float64).min) in the default dtype float32 and raises ("value cannot be converted
    to type float without overflow"); with float64 as the default dtype it runs, but the masked entries
    finfo(float64).min become -inf in the reference's float32 softmax (softmax(..., dtype=torch.float32)), a
    fully masked row (a left-pad query, a fully padded chunk) becomes NaN, and 0*NaN poisons every gradient
    (ref-padded-batch: loss and all gradients NaN).  We wrap
    the reference's two mask helpers to build the mask in float32 (finfo(float32).min, exactly what the
    float32 run uses) and upcast it, so the float64 run masks the way the float32 run does."""
    if not active:
        yield
        return
    oe, oc = REF._expand_mask, REF._make_causal_mask

    def expand(mask, dtype, tgt_len=None):
        return oe(mask, torch.float32, tgt_len=tgt_len).to(dtype)

    def causal(shape, dtype, device, past_key_values_length=0):
        return oc(shape, torch.float32, device=device, past_key_values_length=past_key_values_length).to(dtype)

    REF._expand_mask, REF._make_causal_mask = expand, causal
    try:
        yield
    finally:
        REF._expand_mask, REF._make_causal_mask = oe, oc


# ----------------------------------------------------------------------------
# trainable sets (train.py: train_param)


def in_set(name, set_name, cross):
    if set_name == "all" or not cross:  # train_everything; or not a cepe model with cross-attention -> True
        return True
    if "cross_attn" in name:
        return True
    return set_name == "cross_attn+encoder" and "encoder" in name  # --train_encoder: "encoder" in name


def flags(set_name, cfg):
    """The train.py flags this set corresponds to, and the value we give the model's train_encoder
    attribute (the switch in LlamaForCausalContextLM.forward that detaches the encoder output)."""
    cross = has_cross(cfg)
    if not cross:
        return {"train_everything": set_name == "all", "train_encoder": False, "model_train_encoder": None,
                "why": "not a cepe model with cross-attention: train.py's train_param returns True for every "
                       "parameter (and train_mlm.py trains every parameter), so 'all' is the only set"}
    eim = bool(cfg.get("encoder_is_model"))
    f = {"cross_attn": dict(train_everything=False, train_encoder=False, model_train_encoder=False),
         "cross_attn+encoder": dict(train_everything=False, train_encoder=True, model_train_encoder=True),
         "all": dict(train_everything=True, train_encoder=False, model_train_encoder=True)}[set_name]
    why = {
        "cross_attn": "requires_grad = 'cross_attn' in name (train.py default). model.train_encoder=False "
                      "(as the fixture's config.json); the encoder then runs under no_grad and its output is "
                      "detached. Checked: the cross_attn gradients are the same with model.train_encoder=True "
                      "(encoder parameters do not require grad there either).",
        "cross_attn+encoder": "--train_encoder: requires_grad = 'cross_attn' in name or 'encoder' in name. "
                              "model.train_encoder=True so that the encoder output is NOT detached "
                              "(forward: train_encoder = self.training and self.encoder is not None and "
                              "self.train_encoder). Note train.py copies --train_encoder into config.train_encoder "
                              "only when it converts a plain LLaMA config; for a checkpoint that already has "
                              "num_cross_attn_layers it keeps the config's value, and with train_encoder false in "
                              "config.json the encoder.* gradients would be None. We take the set to mean that the "
                              "encoder is trained.",
        "all": "--train_everything: requires_grad on every parameter; model.train_encoder=True for the same "
               "reason (checked: with the config's train_encoder=false the reference leaves every encoder.* "
               "gradient None while the other gradients are unchanged).",
    }[set_name]
    if eim:
        f["model_train_encoder"] = True
        why += (" encoder_is_model: self.encoder is None, so the forward's train_encoder is False whatever "
                "model.train_encoder says: the chunks are encoded by self.model under torch.no_grad() and "
                "detached. The encoding pass contributes NO gradient; model.* gradients come from the decoder "
                "pass only. There are no encoder.* parameters, so cross_attn+encoder = cross_attn.")
    f["why"] = why
    return f


# ----------------------------------------------------------------------------
# one reference forward + backward


def to_t(req, dtype):
    t = {}
    for k in ("input_ids", "attention_mask", "position_ids", "encoder_input_ids", "encoder_attention_mask",
              "labels", "distill_index"):
        if k in req:
            t[k] = torch.tensor(req[k], dtype=torch.long)
    if "distill_prob" in req:
        t["distill_prob"] = torch.tensor(req["distill_prob"], dtype=dtype)
    return t


def run(cfg, sd, req, set_name, dtype, model_train_encoder=None):
    model = fresh(cfg, sd, dtype)
    model.train()
    cross = has_cross(cfg)
    arch = arch_of(cfg)
    if arch == "LlamaForCausalContextLM":
        f = flags(set_name, cfg)
        mte = f["model_train_encoder"] if model_train_encoder is None else model_train_encoder
        model.train_encoder = bool(mte)
        # the reference reads these from self.* (set from config.json in __init__); request values override
        for k in ("lm_loss_cof", "kl_loss_cof", "kl_loss_mode"):
            if k in req:
                setattr(model, k, req[k])
    for n, p in model.named_parameters():
        p.requires_grad = in_set(n, set_name, cross)
    t = to_t(req, dtype)
    kw = dict(input_ids=t["input_ids"], attention_mask=t.get("attention_mask"), position_ids=t.get("position_ids"),
              labels=t["labels"], use_cache=False, return_dict=True)
    if arch == "LlamaForCausalContextLM":
        kw.update(encoder_input_ids=t.get("encoder_input_ids"), encoder_attention_mask=t.get("encoder_attention_mask"),
                  distill_prob=t.get("distill_prob"), distill_index=t.get("distill_index"))
    with float64_masks(dtype == torch.float64):
        out = model(**kw)
        loss = out.loss
        loss.backward()
    assert loss.dtype == dtype or arch == "LlamaForCausalLM", loss.dtype  # LlamaForCausalLM: logits.float()
    grads, none = {}, []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            none.append(n)
        else:
            grads[n] = p.grad.detach().to(torch.float64).numpy().copy()
    return float(loss.detach().to(torch.float64)), grads, none, out.logits.detach().to(torch.float64)



def contract_names(cfg, ckpt_names, set_name):
    """The gradient names the contract asks for, derived from the checkpoint's names (not from PyTorch)."""
    a = arch_of(cfg)
    names = set(ckpt_names)
    if cfg.get("tie_word_embeddings"):
        names.discard("lm_head.weight")  # tied: one gradient, under model.embed_tokens.weight
        names.add("model.embed_tokens.weight")
    if a == "LlamaForMLM":
        names.discard("lm_head.bias")  # the same Parameter as lm_bias
        names.add("lm_bias")
    if a != "LlamaForCausalContextLM" or set_name == "all":
        return sorted(names)
    out = {n for n in names if "cross_attn" in n}
    if set_name == "cross_attn+encoder":
        out |= {n for n in names if n.startswith("encoder.")}
    return sorted(out)


# ----------------------------------------------------------------------------
# inputs


def make_labels(rng, ids, mask, causal, extra=0.2):
    """labels = input_ids; -100 at pads; for causal models also -100 at t+1 where position t is a pad (its
    logits would be the pad position's, implementation-defined); -100 at ~`extra` of the rest."""
    lab = ids.copy()
    lab[mask == 0] = -100
    if causal:
        lab[:, 1:][mask[:, :-1] == 0] = -100
    drop = rng.rand(*ids.shape) < extra
    lab[drop] = -100
    scored = lab[:, 1:] != -100 if causal else lab != -100
    for r in range(ids.shape[0]):
        assert scored[r].any(), "a row without any scored label"
    return lab


def make_distill(rng, bsz, T, k, vocab, zero_tail_at=(), zero_rest_at=()):
    """Teacher top-k: ids = top-k of random logits (distinct), probs = softmax top-k sorted descending,
    quantised to multiples of 2^-16 (exact in float32/float64 and in the JSON text), then the rest
    = 1 - sum (so each row sums to exactly 1).  zero_tail_at: (b,t) whose last k//2 top-k probs are
    exactly 0; zero_rest_at: (b,t) whose 'rest' is exactly 0 (top-1 absorbs it)."""
    idx = np.zeros((bsz, T, k), np.int64)
    prob = np.zeros((bsz, T, k + 1), np.float64)
    for b in range(bsz):
        for t in range(T):
            lg = rng.randn(vocab) * 2.0
            order = np.argsort(-lg, kind="stable")[:k]
            p = np.exp(lg - lg.max())
            p /= p.sum()
            n = np.floor(p[order] * 65536).astype(np.int64)
            if (b, t) in zero_tail_at:
                n[k - k // 2:] = 0
            if (b, t) in zero_rest_at:
                n[0] += 65536 - n.sum()
            assert np.all(np.diff(n) <= 0) and n.sum() <= 65536
            idx[b, t] = order
            prob[b, t, :k] = n / 65536.0
            prob[b, t, k] = (65536 - n.sum()) / 65536.0
            assert len(set(order.tolist())) == k
    return idx, prob


# ----------------------------------------------------------------------------
# new checkpoints (LlamaForCausalLM, LlamaForMLM, a small CEPE model)


def hf_config(arch, **kw):
    c = {"architectures": [arch], "model_type": "llama", "vocab_size": 96, "hidden_size": 32,
         "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "hidden_act": "silu", "max_position_embeddings": 64, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
         "use_cache": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "pretraining_tp": 1,
         "tie_word_embeddings": False, "rope_theta": 10000.0, "rope_scaling": None, "torch_dtype": "float32",
         "transformers_version": "4.34.1"}
    for k, v in kw.items():
        c[k] = v
    return c


def init_weights(cfg, seed, embed_std, bias_std=0.5, store_tied_head=False):
    """One value per distinct Parameter (named_parameters order is irrelevant: sorted names), then the
    aliases the checkpoint stores: lm_head.bias = lm_bias (MLM), lm_head.weight = embed (tied, if stored).
    Linear weights N(0,1/fan_in), embeddings N(0,embed_std), norms 1+0.2 N(0,1), 1-D biases N(0,bias_std)."""
    model = build(cfg)
    rng = np.random.RandomState(seed)
    sd = {}
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        shape = tuple(p.shape)
        if name.endswith("norm.weight"):
            a = 1.0 + 0.2 * rng.randn(*shape)
        elif "embed_tokens" in name:
            a = embed_std * rng.randn(*shape)
        elif len(shape) == 1:
            a = bias_std * rng.randn(*shape)
        else:
            a = rng.randn(*shape) / np.sqrt(shape[1])
        sd[name] = a.astype(np.float32)
    if arch_of(cfg) == "LlamaForMLM":
        sd["lm_head.bias"] = sd["lm_bias"].copy()
    if cfg["tie_word_embeddings"] and store_tied_head:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].copy()
    assert set(sd) <= set(model.state_dict()), set(sd) - set(model.state_dict())
    return sd


def causal_inputs(rng, vocab, bsz, seq, left_pad=None, zero_at=()):
    ids = mg.rand_ids(rng, (bsz, seq), vocab)
    mask = np.ones((bsz, seq), np.int64)
    for r in range(bsz):
        n = (left_pad or {}).get(r, 0)
        ids[r, :n] = mg.PAD_IN
        mask[r, :n] = 0
        ids[r, n] = mg.BOS
    for (r, c) in zero_at:
        ids[r, c] = 0
    return ids, mask


def mlm_inputs(rng, vocab, bsz, seq, right_pad=None, zero_at=(), p=0.3):
    """BOS + random ids (3..vocab-2, never [MASK]); right padding (id 0, mask 0); 30% of the non-special
    tokens (not BOS/pads) replaced by [MASK] = vocab-1; labels = original id there, -100 elsewhere."""
    mask_id = vocab - 1
    ids = rng.randint(3, vocab - 1, size=(bsz, seq)).astype(np.int64)
    ids[:, 0] = mg.BOS
    mask = np.ones((bsz, seq), np.int64)
    for r, n in (right_pad or {}).items():
        ids[r, seq - n:] = mg.PAD_IN
        mask[r, seq - n:] = 0
    for (r, c) in zero_at:
        ids[r, c] = 0
    special = (ids == mg.BOS) | (mask == 0)
    for (r, c) in zero_at:
        special[r, c] = True  # keep the id-0 token (padding_idx check) unmasked
    sel = (rng.rand(bsz, seq) < p) & ~special
    for r in range(bsz):
        if not sel[r].any():
            sel[r, 1] = True
    labels = np.where(sel, ids, -100)
    inp = np.where(sel, mask_id, ids)
    return inp, mask, labels


# ----------------------------------------------------------------------------
# fixtures

# sets written by default (the rest are computed and self-checked, names listed in golden.json)
CEPE_FROM_REF = [
    # name, model dir, sets written, covers
    ("tiny-a", "shared:fixtures/cepe-tiny-a", ["cross_attn"],
     "the shared fixture cepe-tiny-a (MHA 4/4, 4 layers all with cross-attention, encoder 2 layers, bsz 1)"),
    ("gqa", "ref-gqa", ["cross_attn"], None),
    ("narrow-enc", "ref-narrow-enc", ["cross_attn"], None),
    ("padded-batch", "ref-padded-batch", ["cross_attn"], None),
    ("tied", "ref-tied", ["cross_attn"], None),
    ("multi-hid", "ref-multi-hid", ["cross_attn", "cross_attn+encoder"], None),
    ("with-query", "ref-with-query", ["cross_attn"], None),
    ("rope-linear", "ref-rope-linear", ["cross_attn"], None),
    ("rope-dynamic", "ref-rope-dynamic", ["cross_attn"], None),
    ("encoder-is-model", "ref-encoder-is-model", ["cross_attn", "all"], None),
    ("with-query-hid", "ref-with-query-hid", ["cross_attn"], None),
    ("mqa-wide-enc", "ref-mqa-wide-enc", ["cross_attn"], None),
    ("long-chunks-batch", "ref-long-chunks-batch", ["cross_attn"], None),
]

KL_VARIANTS = [
    # name, base model dir, T, k, request coefficients (None = from config.json), sets, covers
    dict(name="gqa-kl-drop", model_dir="ref-gqa", T="seq", k=5, req=dict(lm_loss_cof=1.0, kl_loss_cof=2.0, kl_loss_mode="drop"),
         sets=["cross_attn"], seed=9101,
         covers="CEPED loss on ref-gqa: lm_loss_cof 1 + kl_loss_cof 2, kl_loss_mode drop, T = seq = 10 (KL on every "
                "position, including the last, which CE does not score), k 5; two positions with exact-0 top-k "
                "probabilities, one with rest = 0"),
    dict(name="padded-batch-kl-smooth", model_dir="ref-padded-batch", T=6, k=4,
         req=dict(lm_loss_cof=1.0, kl_loss_cof=2.0, kl_loss_mode="smooth_1e-6"), sets=["cross_attn"], seed=9202,
         covers="CEPED loss on ref-padded-batch (bsz 3, row 1 left-padded by 3, padded/fully padded chunks): "
                "lm 1 + kl 2, kl_loss_mode smooth_1e-6, T 6 < seq 10 (the last 6 positions, all valid in every row: "
                "the reference's KL has no mask), k 4, exact-0 probabilities"),
    dict(name="narrow-enc-kl-smooth", model_dir="ref-narrow-enc", T=4, k=3,
         req=dict(lm_loss_cof=0.5, kl_loss_cof=1.5, kl_loss_mode="smooth_0.001"), sets=["cross_attn"],
         seed=9303,
         covers="CEPED loss on ref-narrow-enc: lm 0.5 + kl 1.5, kl_loss_mode smooth_0.001 (another delta), T 4, k 3"),
]

MINI_CEPE = dict(name="mini-kl-config", seed=9404,
                 covers="a small CEPE checkpoint (decoder hidden 32, 2 layers, GQA 4/2, vocab 64; encoder hidden 32, 1 "
                        "layer, GQA 4/2) whose config.json sets lm_loss_cof 0.5, kl_loss_cof 2.0, kl_loss_mode smooth_1e-4 and the "
                        "request OMITS all three (they come from config.json; lm_loss_cof applies because the model is "
                        "in training mode); distillation T 5 < seq 8, k 3; row 1 left-padded by 2; one right-padded chunk",
                 dec=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_key_value_heads=2,
                          max_position_embeddings=32),
                 enc=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_key_value_heads=2,
                          max_position_embeddings=16),
                 cepe=dict(lm_loss_cof=0.5, kl_loss_cof=2.0, kl_loss_mode="smooth_1e-4"),
                 shape=dict(bsz=2, seq=8, n_ctx=2, ctx_len=6), T=5, k=3)

NEW_MODELS = [
    dict(name="causal-tied", seed=9505,
         covers="LlamaForCausalLM (plain decoder, standard HF LlamaConfig keys, no CEPE keys, no is_decoder key): "
                "hidden 32, 3 layers, GQA 4/2, vocab 96, tie_word_embeddings true (no lm_head.weight stored: one "
                "gradient, model.embed_tokens.weight), pad_token_id 0 (nn.Embedding padding_idx: row 0 of the "
                "embedding gets no gradient from id-0 lookups, only from the tied output projection; one valid "
                "position holds id 0); row 1 left-padded by 3",
         cfg=dict(num_hidden_layers=3, tie_word_embeddings=True, pad_token_id=0), kind="causal",
         shape=dict(bsz=2, seq=12), left_pad={1: 3}, zero_at=[(0, 5)]),
    dict(name="causal-rope-dynamic", seed=9606,
         covers="LlamaForCausalLM untied (lm_head.weight stored), is_decoder true in config.json, 2 layers, GQA 4/2, "
                "hidden 32, vocab 96, rope_scaling dynamic x2 with max_position_embeddings 8 < seq 12 (NTK base "
                "rescaled for seq_len 12), rms_norm_eps 1e-5, rope_theta 5e5; row 0 left-padded by 2",
         cfg=dict(is_decoder=True, rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=8,
                  rms_norm_eps=1e-5, rope_theta=500000.0),
         kind="causal", shape=dict(bsz=2, seq=12), left_pad={0: 2}, zero_at=[]),
    dict(name="mlm", seed=9707,
         covers="LlamaForMLM (bidirectional trunk + head lm_dense(+bias) -> SiLU -> lm_layer_norm -> tied output + "
                "lm_bias): hidden 32, 2 layers, GQA 4/2, vocab 96 with [MASK] = 95, pad_token_id 0 and "
                "tie_word_embeddings true as configs/mlm_config.json; checkpoint WITHOUT lm_head.weight (as HF "
                "save_pretrained writes it), with lm_bias and lm_head.bias; random non-zero lm_dense.bias and lm_bias; "
                "30% of the non-special tokens masked; bsz 3, seq 16, row 1 right-padded by 3; one valid position holds id 0 "
                "(padding_idx: no embedding gradient from it)",
         cfg=dict(architectures=["LlamaForMLM"], is_decoder=False, tie_word_embeddings=True, pad_token_id=0),
         kind="mlm", store_tied_head=False, shape=dict(bsz=3, seq=16), right_pad={1: 3}, zero_at=[(0, 4)]),
    dict(name="mlm-stored-head", seed=9808,
         covers="LlamaForMLM checkpoint that STORES lm_head.weight (= model.embed_tokens.weight, as the real "
                "LLaMA-MLM-Large pytorch_model.bin does) plus lm_bias and lm_head.bias: still one gradient each, "
                "model.embed_tokens.weight and lm_bias; MHA 4/4, 2 layers, hidden 32, vocab 96 ([MASK] 95), "
                "rope_theta 2.5e5, pad_token_id null; no padding, bsz 2, seq 16",
         cfg=dict(architectures=["LlamaForMLM"], is_decoder=False, tie_word_embeddings=True, num_key_value_heads=4,
                  rope_theta=250000.0),
         kind="mlm", store_tied_head=True, shape=dict(bsz=2, seq=16), right_pad=None, zero_at=[]),
]


# ----------------------------------------------------------------------------
# computing one fixture


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def compute_set(cfg, sd, req, set_name, ckpt_names):
    loss64, g64, none64, logits64 = run(cfg, sd, req, set_name, torch.float64)
    assert not none64, f"{set_name}: parameters without a gradient: {none64}"
    loss64b, g64b, _, _ = run(cfg, sd, req, set_name, torch.float64)
    repeat_ok = loss64b == loss64 and all(np.array_equal(g64[n], g64b[n]) for n in g64)
    assert repeat_ok, "train-mode float64 runs differ: something is stochastic"
    loss32, g32, none32, _ = run(cfg, sd, req, set_name, torch.float32)
    assert not none32
    assert np.isfinite(loss64) and all(np.all(np.isfinite(v)) for v in g64.values())
    # contract: names and shapes
    want = contract_names(cfg, ckpt_names, set_name)
    assert sorted(g64) == want, (set_name, sorted(set(g64) ^ set(want)))
    shapes = {n: list(sd[n].shape) if n in sd else None for n in g64}
    for n, v in g64.items():
        assert n in sd, f"gradient {n} is not a checkpoint name"
        assert list(v.shape) == list(sd[n].shape), n
    if cfg.get("tie_word_embeddings"):
        assert "lm_head.weight" not in g64 and ("model.embed_tokens.weight" in g64 or set_name != "all")
    if arch_of(cfg) == "LlamaForMLM":
        assert "lm_bias" in g64 and "lm_head.bias" not in g64
    # precision self-check
    lrel = rel(loss32, loss64)
    worst = {}
    for n in g64:
        m = float(np.abs(g64[n]).max())
        d = float(np.abs(g32[n] - g64[n]).max())
        worst[n] = (d / m) if m > 0 else (0.0 if d == 0 else float("inf"))
    wn = max(worst, key=worst.get)
    assert lrel <= LOSS_RTOL, (set_name, lrel)
    assert worst[wn] <= GRAD_TOL, (set_name, wn, worst[wn])
    zero = sorted(n for n in g64 if not np.any(g64[n]))
    check = {"float32_vs_float64_loss_rel": lrel,
             "float32_vs_float64_worst_grad_diff_over_max": worst[wn], "worst_grad_name": wn,
             "train_mode_float64_repeat_bitexact": repeat_ok,
             "all_zero_gradients": zero}
    return dict(loss=loss64, grads=g64, check=check, shapes=shapes, logits=logits64)


def ce_term(logits, labels, causal):
    lg = logits
    lab = torch.tensor(labels, dtype=torch.long)
    if causal:
        lg, lab = lg[:, :-1], lab[:, 1:]
    return float(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lab.reshape(-1), ignore_index=-100))


def kl_manual(logits, req, mode):
    """The CEPED KL written out independently of the reference (spec 3.6), for the self-check."""
    dp = torch.tensor(req["distill_prob"], dtype=torch.float64)
    di = torch.tensor(req["distill_index"], dtype=torch.long)
    B, T, k1 = dp.shape
    p = torch.softmax(logits[:, -T:].to(torch.float64), -1)
    top = torch.gather(p, 2, di)
    q = torch.cat([top, (1 - top.sum(-1)).unsqueeze(-1)], -1).reshape(B * T, k1)
    t = dp.reshape(B * T, k1)
    if mode == "drop":
        q, t = q[:, :-1], t[:, :-1]
    else:
        delta = float(mode.split("_")[-1])
        q, t = (q + delta) / (1 + delta * k1), (t + delta) / (1 + delta * k1)
    return float(torch.where(t > 0, t * (torch.log(t) - torch.log(q)), torch.zeros_like(t)).sum() / (B * T))


def dump_json(obj, path):
    """indent=1, but lists of numbers on one line (shapes, coefficients)."""
    txt = json.dumps(obj, indent=1)
    txt = re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", txt)
    assert json.loads(txt) == obj
    with open(path, "w") as f:
        f.write(txt + "\n")


def write_fixture(name, covers, model_dir, cfg, sd, req, written_sets, out_root, extra, full, own_model=None):
    d = os.path.join(out_root, f"grad-{name}")
    os.makedirs(d, exist_ok=True)
    if own_model is not None:  # new checkpoint: config.json + model.safetensors beside the goldens
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)  # the HF layout, like the ref-* configs
            f.write("\n")
        st_io.write(os.path.join(d, "model.safetensors"), sd)
        assert st_io.read(os.path.join(d, "model.safetensors")).keys() == sd.keys()
    with open(os.path.join(d, "request.json"), "w") as f:
        json.dump(req, f, separators=(",", ":"))
        f.write("\n")
    assert json.load(open(os.path.join(d, "request.json"))) == req
    ckpt_names = sorted(sd)
    cross = has_cross(cfg)
    all_sets = SET_ORDER if cross else ["all"]
    if full:
        written_sets = all_sets
    sets = {}
    loss_ref, logits = None, None
    for s in all_sets:
        r = compute_set(cfg, sd, req, s, ckpt_names)
        if loss_ref is None:
            loss_ref, logits = r["loss"], r["logits"]
        assert r["loss"] == loss_ref or abs(r["loss"] - loss_ref) <= 1e-12 * abs(loss_ref), (s, r["loss"], loss_ref)
        fn = f"grads-{s}.safetensors"
        entry = {"trainable_arg": SET_ARG[s], "written": s in written_sets, "file": fn if s in written_sets else None,
                 "loss": r["loss"], "n_gradients": len(r["grads"]),
                 "gradients": {n: list(r["grads"][n].shape) for n in sorted(r["grads"])},
                 "reference_flags": flags(s, cfg), "self_check": r["check"]}
        if cross and s == "cross_attn":
            # config.train_encoder does not matter for this set
            _, gte, _, _ = run(cfg, sd, req, s, torch.float64, model_train_encoder=True)
            entry["self_check"]["max_abs_diff_vs_model_train_encoder_true"] = max(
                float(np.abs(gte[n] - r["grads"][n]).max()) for n in gte)
        if cross and s == "all" and not cfg.get("encoder_is_model"):
            _, gfe, none, _ = run(cfg, sd, req, s, torch.float64, model_train_encoder=False)
            enc = sorted(n for n in r["grads"] if n.startswith("encoder."))
            entry["self_check"]["with_model_train_encoder_false"] = {
                "encoder_grads_none": sorted(none) == enc,
                "max_abs_diff_other_grads": max(float(np.abs(gfe[n] - r["grads"][n]).max()) for n in gfe)}
            assert sorted(none) == enc
        if s in written_sets:
            t = {"loss": np.array([r["loss"]], np.float32)}
            for n, v in r["grads"].items():
                t[n] = v.astype(np.float32)
            st_io.write(os.path.join(d, fn), t)
            back = st_io.read(os.path.join(d, fn))
            assert sorted(back) == sorted(t) and all(np.array_equal(back[k], t[k]) for k in t)
        sets[s] = entry
    causal = arch_of(cfg) != "LlamaForMLM"
    ce = ce_term(logits, req["labels"], causal)
    terms = {"ce": ce}
    arch = arch_of(cfg)
    if arch == "LlamaForCausalContextLM":
        lm = req.get("lm_loss_cof", cfg.get("lm_loss_cof", 1.0))
        terms["lm_loss_cof"] = lm
        terms["lm_loss_cof_source"] = "request" if "lm_loss_cof" in req else "config.json"
        if "distill_prob" in req:
            kl = req.get("kl_loss_cof", cfg.get("kl_loss_cof", 1.0))
            mode = req.get("kl_loss_mode", cfg.get("kl_loss_mode", "smooth"))
            terms.update(kl_loss_cof=kl, kl_loss_mode=mode,
                         kl_source="request" if "kl_loss_cof" in req else "config.json",
                         kl_loss_mode_source="request" if "kl_loss_mode" in req else "config.json",
                         kl=(loss_ref - lm * ce) / kl)
            klm = kl_manual(logits, req, mode)
            terms["kl_independent_recomputation"] = klm
            assert abs(lm * ce + kl * klm - loss_ref) <= 1e-9 * abs(loss_ref), (lm * ce + kl * klm, loss_ref)
        else:
            assert abs(lm * ce - loss_ref) <= 1e-9 * abs(loss_ref), (lm * ce, loss_ref)
        terms["loss = lm_loss_cof*ce + kl_loss_cof*kl"] = loss_ref
    else:
        terms["loss = ce"] = loss_ref
        assert abs(ce - loss_ref) <= 1e-6 * abs(loss_ref), (ce, loss_ref)
    shapes_req = {k: list(np.array(v).shape) for k, v in req.items() if isinstance(v, list)}
    gj = {
        "name": f"grad-{name}",
        "covers": covers,
        "architecture": arch,
        "model_dir": model_dir,
        "model_dir_note": "relative to tests/data; 'shared:X' is X under the shared directory (../shared relative "
                          "to the repository root)",
        "request": "request.json",
        "command": "cepe grad --model <model_dir> --request request.json --output OUT.safetensors --trainable <trainable_arg>",
        "request_fields": {k: (shapes_req[k] if k in shapes_req else req[k]) for k in req},
        "loss_terms": terms,
        "sets": sets,
        "sets_written": [s for s in all_sets if sets[s]["written"]],
        "sets_not_written_reason": None if all(sets[s]["written"] for s in all_sets) else
            "repository size budget (tests/data/grad-* under 5 MB): computed and self-checked, names and loss listed "
            "here; `make_grad_goldens.py --full` writes them",
        "reference": REF_INFO,
        "golden_dtype": "float64 run of the reference (model.double(), distill_prob float64), stored as F32",
        "train_mode": "model.train(); nothing in the reference is stochastic in train mode (attention dropout is "
                      "hard-coded 0 / absent in the eager path, no gradient checkpointing, train_batch_mode none): "
                      "two float64 runs are bit-identical (self_check.train_mode_float64_repeat_bitexact)",
        "tolerances": {"loss_rel": LOSS_RTOL, "grad_abs_over_tensor_max_abs": GRAD_TOL},
        "tensors": "every grads-<set>.safetensors holds F32 tensors only: 'loss' [1] and, for each name in "
                   "sets[<set>].gradients, that gradient with the listed shape (= the checkpoint tensor's shape); "
                   "names sorted in the file",
    }
    gj.update(extra)
    dump_json(gj, os.path.join(d, "golden.json"))
    sizes = {fn: os.path.getsize(os.path.join(d, fn)) for fn in sorted(os.listdir(d))}
    worst = max(sets[s]["self_check"]["float32_vs_float64_worst_grad_diff_over_max"] for s in sets)
    lr = max(sets[s]["self_check"]["float32_vs_float64_loss_rel"] for s in sets)
    print(f"grad-{name}: loss={loss_ref:.6f} worst_grad={worst:.2e} loss_rel={lr:.2e} sizes={sizes}", flush=True)
    return sizes


def cepe_request(g, cfg):
    req = {"input_ids": g["input_ids"].tolist(), "attention_mask": g["attention_mask"].tolist()}
    if "position_ids" in g:
        req["position_ids"] = g["position_ids"].tolist()
    req["encoder_input_ids"] = g["encoder_input_ids"].tolist()
    req["encoder_attention_mask"] = g["encoder_attention_mask"].tolist()
    return req


NOTES_COMMON = [
    "labels: input_ids with -100 at padded positions (attention_mask 0), for causal models also at t+1 where "
    "position t is a pad (those logits are the pad position's, implementation-defined), and at ~20% more random "
    "positions (numpy RandomState(labels_seed)). Causal models score logits[t] against labels[t+1], LlamaForMLM "
    "logits[t] against labels[t]; CE is the mean over the scored positions.",
    "float64 run: the reference is unmodified except that its two mask helpers (_expand_mask, _make_causal_mask) "
    "are wrapped to build masks with finfo(float32).min and upcast, exactly the float32 run's masks (see "
    "make_grad_goldens.float64_masks): unwrapped, _make_causal_mask raises in float64 (torch.full of "
    "finfo(float64).min in the default float32 dtype), and with float64 as the default dtype the reference's "
    "float32 softmax turns fully masked rows (left-pad queries, fully padded chunks) into NaN. The reference still computes RMSNorm and the attention softmax in float32 inside the "
    "float64 run (its own casts), and LlamaForCausalLM casts logits to float32 before the CE (logits.float()).",
]


def cepe_fixture(name, model_dir, written, covers, out_root, full, kl=None):
    mdir = model_path(model_dir)
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    sd = st_io.read(os.path.join(mdir, "model.safetensors"))
    g = st_io.read(os.path.join(mdir, "golden.safetensors"))
    gj_fwd = json.load(open(os.path.join(mdir, "golden.json")))
    covers = covers or gj_fwd.get("covers")
    req = cepe_request(g, cfg)
    ids, mask = g["input_ids"], g["attention_mask"]
    seed = (kl or {}).get("seed", 7000 + sum(map(ord, name)))
    rng = np.random.RandomState(seed)
    req["labels"] = make_labels(rng, ids, mask, causal=True).tolist()
    extra = {"labels_seed": seed, "notes": list(NOTES_COMMON),
             "forward_golden": f"{model_dir}/golden.safetensors (the inputs are its input_ids, attention_mask, "
                               f"position_ids (if stored; else the default arange), encoder_input_ids, encoder_attention_mask)"}
    if kl is not None:
        T = ids.shape[1] if kl["T"] == "seq" else kl["T"]
        B = ids.shape[0]
        assert mask[:, ids.shape[1] - T:].all(), "the reference's KL has no mask: keep pads out of the last T"
        di, dp = make_distill(rng, B, T, kl["k"], cfg["vocab_size"], zero_tail_at={(0, 1), (B - 1, 0)},
                              zero_rest_at={(B - 1, T - 1)})
        req["distill_index"] = di.tolist()
        req["distill_prob"] = dp.tolist()
        for k2, v in kl["req"].items():
            req[k2] = v
        extra["distill"] = {"T": T, "k": kl["k"], "seed": seed,
                            "rule": "distill_index = top-k ids of N(0,4) random teacher logits (distinct, by descending "
                                    "teacher prob); distill_prob = their softmax probs floored to multiples of 2^-16 "
                                    "(descending), then rest = 1 - sum; (0,1) and (B-1,0) have their last k//2 top-k "
                                    "probs exactly 0; (B-1,T-1) has rest exactly 0",
                            "kl_positions": f"logits[:, -{T}:] (the reference's KL has no mask; all these positions are "
                                            f"valid in every row)"}
    elif cfg.get("kl_loss_mode") == "smooth":
        extra["notes"].append("config.json has kl_loss_mode 'smooth' (no delta): a request with distillation fields but "
                              "no kl_loss_mode makes the reference raise (float('smooth')); such requests must name "
                              "the mode.")
    return write_fixture(name, covers, model_dir, cfg, sd, req, written, out_root, extra, full)


def mini_fixture(fx, out_root, full):
    cfg = mg.make_config(fx["dec"], fx["enc"], fx["cepe"])
    proto = build(cfg)
    sd = mg.random_weights(proto, fx["seed"])
    del proto
    sh = fx["shape"]
    rng = np.random.RandomState(fx["seed"] + 1)
    inp = mg.make_inputs(rng, cfg["vocab_size"], sh["bsz"], sh["seq"], sh["n_ctx"], sh["ctx_len"], {1: 2},
                         {(0, 1): ("right", 2)})
    pos = mg.pos_from_mask(inp["attention_mask"])
    g = {k: v.numpy() for k, v in inp.items()}
    g["position_ids"] = pos.numpy()
    req = cepe_request(g, cfg)
    req["labels"] = make_labels(rng, g["input_ids"], g["attention_mask"], causal=True).tolist()
    B, T = sh["bsz"], fx["T"]
    di, dp = make_distill(rng, B, T, fx["k"], cfg["vocab_size"], zero_tail_at={(0, 1)}, zero_rest_at={(1, 4)})
    req["distill_index"] = di.tolist()
    req["distill_prob"] = dp.tolist()
    extra = {"labels_seed": fx["seed"] + 1, "weights_seed": fx["seed"], "notes": list(NOTES_COMMON),
             "init": "make_goldens.random_weights (linear N(0,1/fan_in), embeddings N(0,1), norms 1+0.2N(0,1)); inputs "
                     "make_goldens.make_inputs with RandomState(seed+1), then labels and distillation from the same stream",
             "distill": {"T": T, "k": fx["k"], "kl_positions": f"logits[:, -{T}:]"}}
    return write_fixture(fx["name"], fx["covers"], f"grad-{fx['name']}", cfg, sd, req, ["all", "cross_attn",
                         "cross_attn+encoder"], out_root, extra, full, own_model=True)


def new_model_fixture(fx, out_root, full):
    kw = dict(fx["cfg"])
    arch = kw.pop("architectures", ["LlamaForCausalLM"])[0]
    cfg = hf_config(arch, **kw)
    if arch == "LlamaForCausalLM" and "is_decoder" not in fx["cfg"]:
        cfg.pop("is_decoder", None)
    embed_std = 0.3 if cfg["tie_word_embeddings"] else 1.0
    sd = init_weights(cfg, fx["seed"], embed_std, store_tied_head=fx.get("store_tied_head", False))
    sh = fx["shape"]
    rng = np.random.RandomState(fx["seed"] + 1)
    if fx["kind"] == "causal":
        ids, mask = causal_inputs(rng, cfg["vocab_size"], sh["bsz"], sh["seq"], fx.get("left_pad"), fx["zero_at"])
        pos = mask.cumsum(-1) - 1
        pos[mask == 0] = 1
        labels = make_labels(rng, ids, mask, causal=True)
        req = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "position_ids": pos.tolist(),
               "labels": labels.tolist()}
        lab_note = "labels as notes[0]; position_ids = cumsum(attention_mask)-1 with pads 1 (given in the request)"
    else:
        ids, mask, labels = mlm_inputs(rng, cfg["vocab_size"], sh["bsz"], sh["seq"], fx.get("right_pad"), fx["zero_at"])
        req = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}
        lab_note = ("MLM: 30%% of the non-special tokens (not BOS, not pads) replaced by [MASK] = vocab_size-1 = %d; "
                    "labels = the original id there, -100 elsewhere; no position_ids (default arange)" % (cfg["vocab_size"] - 1))
    extra = {"labels_seed": fx["seed"] + 1, "weights_seed": fx["seed"], "notes": list(NOTES_COMMON) + [lab_note],
             "init": "linear weights N(0,1/fan_in), embeddings N(0, std %g), RMSNorm weights 1+0.2N(0,1), 1-D biases "
                     "(lm_dense.bias, lm_bias) N(0, std 0.5); numpy RandomState(weights_seed), sorted parameter names; "
                     "aliases copied (lm_head.bias = lm_bias; lm_head.weight = model.embed_tokens.weight when stored)" % embed_std,
             "checkpoint_names": sorted(sd)}
    if cfg.get("pad_token_id") is not None:
        extra["notes"].append("pad_token_id %d: the reference's nn.Embedding(padding_idx=%d) gives embedding row %d no "
                              "gradient from lookups of id %d (a valid position holds that id)%s"
                              % ((cfg["pad_token_id"],) * 4 + (
                                  "; with tied output weights the row still gets the output projection's gradient"
                                  if cfg["tie_word_embeddings"] else "",)))
    if arch == "LlamaForCausalLM":
        extra["notes"].append("the reference's LlamaForCausalLM reads is_decoder in LlamaModel.__init__ before forcing "
                              "it true, so a config without is_decoder would build a BIDIRECTIONAL trunk; train.py "
                              "(config.is_decoder = True) and eval_lm.py set it first, and so does this script: the "
                              "goldens are causal whether or not config.json has is_decoder")
    return write_fixture(fx["name"], fx["covers"], f"grad-{fx['name']}", cfg, sd, req, ["all"], out_root, extra, full,
                         own_model=True)


def main():
    global REF, REF_INFO
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", default=DATA)
    ap.add_argument("--full", action="store_true", help="write every trainable set of every fixture")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    assert transformers.configuration_utils.FORCE_EAGER_ATTENTION
    REF, info = mg.load_reference()
    mg.REF, mg.REF_INFO = REF, info
    tiny = mg.check_tiny_a()
    REF_INFO = dict(info, dtype="float64 (golden) and float32 (self-check)", tiny_a_forward_self_check=tiny)
    mg.REF_INFO = REF_INFO
    total = 0

    def want(n):
        return not args.only or n in args.only

    for name, mdir, written, covers in CEPE_FROM_REF:
        if want(name):
            total += sum(cepe_fixture(name, mdir, written, covers, args.out, args.full).values())
    for kl in KL_VARIANTS:
        if want(kl["name"]):
            total += sum(cepe_fixture(kl["name"], kl["model_dir"], kl["sets"], kl["covers"], args.out, args.full,
                                      kl=kl).values())
    if want(MINI_CEPE["name"]):
        total += sum(mini_fixture(MINI_CEPE, args.out, args.full).values())
    for fx in NEW_MODELS:
        if want(fx["name"]):
            total += sum(new_model_fixture(fx, args.out, args.full).values())
    print(f"total bytes written: {total}")


if __name__ == "__main__":
    main()
