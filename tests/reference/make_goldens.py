#!/usr/bin/python3
"""Golden-output generator for cepe.cpp, driven by the ORIGINAL CEPE reference.

* The reference `modeling_llama_flash.py` (princeton-nlp/CEPE) is read at run
  time from the bare git mirror, written to a temp dir and imported unmodified.
  It is never copied into this repository.
* `transformers` is replaced by our own minimal shim (./transformers_shim).
* Attention is eager everywhere (decoder self-attn, cross-attn, encoder): see
  transformers_shim/transformers/configuration_utils.py (FORCE_EAGER_ATTENTION).
  The reference assigns `encoder_config._flash_attn_2_enabled = True` before
  building the encoder; with the shim that assignment is recorded but the
  attribute reads False, so every LlamaDecoderLayer builds LlamaAttention /
  LlamaCrossAttention.  build_model() asserts that no flash module exists.
* float32, torch.set_num_threads(1), CPU.

Step 1 reproduces /work/shared/fixtures/cepe-tiny-a (logits to 1e-5, greedy
sequences exactly); nothing is written unless that passes.
Step 2 writes tests/data/ref-<name>/ fixtures.

Usage:  /usr/bin/python3 tests/reference/make_goldens.py [--only NAME ...] [--check-only]
"""
import argparse
import copy
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep tests/reference free of __pycache__

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "transformers_shim"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import st_io  # noqa: E402
import transformers  # noqa: E402  (the shim)
from transformers import configuration_utils  # noqa: E402

MIRROR = os.environ.get("CEPE_MIRROR", "/work/.mirror/princeton-nlp+CEPE/repo")
REF_REV = os.environ.get("CEPE_REV", "HEAD")
REF_FILE = "modeling_llama_flash.py"
TINY_A = os.environ.get("CEPE_TINY_A", "/work/shared/fixtures/cepe-tiny-a")
EOS = 2
BOS = 1
PAD_IN = 0  # token id placed at padded positions (value is irrelevant: masked)
MAX_NEW = 8

# ----------------------------------------------------------------------------
# reference import


def load_reference():
    commit = subprocess.check_output(["git", "-C", MIRROR, "rev-parse", REF_REV]).decode().strip()
    src = subprocess.check_output(["git", "-C", MIRROR, "show", f"{commit}:{REF_FILE}"])
    tmp = tempfile.mkdtemp(prefix="cepe_ref_")
    path = os.path.join(tmp, REF_FILE)
    with open(path, "wb") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("cepe_reference_modeling", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cepe_reference_modeling"] = mod
    spec.loader.exec_module(mod)
    info = {
        "source": f"github princeton-nlp/CEPE @ {commit}:{REF_FILE} (read from the git mirror at run time, imported unmodified)",
        "cepe_commit": commit,
        "modeling_file_sha256": hashlib.sha256(src).hexdigest(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "attention_path": "eager: LlamaAttention (decoder self-attn and encoder self-attn) + LlamaCrossAttention; "
                          "_flash_attn_2_enabled reads False for decoder and encoder (shim FORCE_EAGER_ATTENTION)",
        "dtype": "float32",
        "torch_threads": 1,
    }
    return mod, info


REF, REF_INFO = None, None


def build_model(cfg_dict):
    config = transformers.LlamaConfig.from_dict(cfg_dict)
    model = REF.LlamaForCausalContextLM(config)
    model.eval()
    for m in model.modules():
        assert not isinstance(m, (REF.LlamaFlashAttention2, REF.LlamaCrossFlashAttention2)), "flash module built"
    if cfg_dict.get("encoder_is_model"):
        assert model.encoder is None and model.encoder_is_model  # the decoder trunk encodes the chunks
    else:
        assert model.encoder.config.__dict__.get("_flash_attn_2_requested") is True  # reference asked for flash
    return model


def load_weights(model, sd):
    tied = bool(model.config.tie_word_embeddings)
    tsd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(tsd, strict=False)
    allowed = {"lm_head.weight"} if tied else set()
    assert not unexpected, unexpected
    assert set(missing) <= allowed, missing
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def fresh(cfg_dict, sd):
    return load_weights(build_model(cfg_dict), sd)


# ----------------------------------------------------------------------------
# forward / generation


def pos_from_mask(mask):
    pos = mask.long().cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return pos


@torch.no_grad()
def forward(model, inp, with_context=True, position_ids=None, labels=None):
    kw = dict(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"], position_ids=position_ids,
              use_cache=False, output_hidden_states=True, return_dict=True, labels=labels)
    if with_context:
        kw.update(encoder_input_ids=inp["encoder_input_ids"], encoder_attention_mask=inp["encoder_attention_mask"])
    return model(**kw)


@torch.no_grad()
def greedy(model, inp, max_new=MAX_NEW, eos=EOS, pad=EOS):
    """Greedy search the way HF 4.34 generate() drives this model (through the
    reference's prepare_inputs_for_generation/_update_model_kwargs_for_generation
    semantics), re-implemented here."""
    ids = inp["input_ids"].clone()
    mask = inp["attention_mask"].clone()
    enc_ids, enc_mask = inp["encoder_input_ids"], inp["encoder_attention_mask"]
    past, enc_states = None, None
    unfinished = torch.ones(ids.shape[0], dtype=torch.long)
    scores = []
    for _ in range(max_new):
        pos = pos_from_mask(mask)
        if past is not None:
            step_ids, pos = ids[:, -1:], pos[:, -1].unsqueeze(-1)
        else:
            step_ids = ids
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                    use_cache=True, encoder_input_ids=enc_ids, encoder_attention_mask=enc_mask,
                    encoder_hidden_states=enc_states, return_dict=True,
                    output_attentions=False, output_hidden_states=False)
        logits = out.logits[:, -1, :]
        scores.append(logits.clone())
        nxt = torch.argmax(logits, dim=-1)
        nxt = nxt * unfinished + pad * (1 - unfinished)
        ids = torch.cat([ids, nxt[:, None]], dim=-1)
        past = out.past_key_values
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        enc_states = out.encoder_hidden_states
        unfinished = unfinished * (nxt != eos).long()
        if unfinished.max() == 0:
            break
    return ids, torch.stack(scores, dim=1)


@torch.no_grad()
def uncached_step_logits(model, inp, seqs, n_steps):
    """Re-forward the growing sequence without any cache; logits of the last position."""
    prompt = inp["input_ids"].shape[1]
    res = []
    for s in range(n_steps):
        ids = seqs[:, :prompt + s]
        mask = torch.cat([inp["attention_mask"], torch.ones(ids.shape[0], s, dtype=torch.long)], dim=-1)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos_from_mask(mask), use_cache=False,
                    encoder_input_ids=inp["encoder_input_ids"], encoder_attention_mask=inp["encoder_attention_mask"],
                    return_dict=True)
        res.append(out.logits[:, -1, :])
    return torch.stack(res, dim=1)


# ----------------------------------------------------------------------------
# step 1: reproduce cepe-tiny-a


def check_tiny_a():
    cfg = json.load(open(os.path.join(TINY_A, "config.json")))
    sd = st_io.read(os.path.join(TINY_A, "model.safetensors"))
    g = st_io.read(os.path.join(TINY_A, "golden.safetensors"))
    inp = {k: torch.from_numpy(g[k]) for k in ("input_ids", "attention_mask", "encoder_input_ids", "encoder_attention_mask")}
    model = fresh(cfg, sd)
    out = forward(model, inp, labels=inp["input_ids"])
    d_logits = float((out.logits - torch.from_numpy(g["logits"])).abs().max())
    b, n_ctx, ctx_len = inp["encoder_input_ids"].shape
    enc = out.encoder_hidden_states[-1].reshape(b, n_ctx, ctx_len, -1)
    d_enc = float((enc - torch.from_numpy(g["encoder_last_hidden_state"])).abs().max())
    out_nc = forward(fresh(cfg, sd), inp, with_context=False)
    d_nc = float((out_nc.logits - torch.from_numpy(g["logits_no_context"])).abs().max())
    d_hid = max(float((out.hidden_states[k] - torch.from_numpy(g[f"decoder_hidden_states.{k}"])).abs().max())
                for k in range(len(out.hidden_states)))
    seqs, scores = greedy(fresh(cfg, sd), inp)
    seq_ok = bool(np.array_equal(seqs.numpy(), g["generated_sequences"]))
    d_scores = float((scores - torch.from_numpy(g["generation_scores"])).abs().max())
    gj = json.load(open(os.path.join(TINY_A, "golden.json")))
    d_loss = abs(float(out.loss) - float(gj["outputs"]["loss"]))
    res = dict(max_abs_logits_diff=d_logits, max_abs_encoder_diff=d_enc, max_abs_logits_no_context_diff=d_nc,
               max_abs_decoder_hidden_diff=d_hid, max_abs_generation_scores_diff=d_scores, loss_abs_diff=d_loss,
               generated_sequences_equal=seq_ok,
               golden_modeling_sha256_equal=gj["reference"]["modeling_file_sha256"] == REF_INFO["modeling_file_sha256"])
    print("cepe-tiny-a self-check:", json.dumps(res, indent=1))
    ok = d_logits <= 1e-5 and d_nc <= 1e-5 and d_enc <= 1e-5 and d_scores <= 1e-5 and seq_ok
    if not ok:
        raise SystemExit("cepe-tiny-a reproduction FAILED; refusing to write fixtures")
    return res


# ----------------------------------------------------------------------------
# step 2: new fixtures

TEMPLATE = json.load(open(os.path.join(TINY_A, "config.json"))) if os.path.exists(os.path.join(TINY_A, "config.json")) else None


def make_config(dec, enc, cepe):
    cfg = copy.deepcopy(TEMPLATE)
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                rope_scaling=None, tie_word_embeddings=False)
    ebase = dict(vocab_size=256, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=32, rms_norm_eps=1e-6, rope_theta=10000.0,
                 rope_scaling=None, tie_word_embeddings=False)
    base.update(dec)
    ebase.update(enc)
    for k, v in base.items():
        assert k in cfg, k
        cfg[k] = v
    for k, v in ebase.items():
        assert k in cfg["encoder_config"], k
        cfg["encoder_config"][k] = v
    cfg["num_cross_attn_layers"] = base["num_hidden_layers"]
    cfg["encoder_hidden_size"] = ebase["hidden_size"]
    for k, v in cepe.items():
        assert k in cfg, k
        cfg[k] = v
    assert set(cfg) == set(TEMPLATE) and set(cfg["encoder_config"]) == set(TEMPLATE["encoder_config"])
    if cfg["encoder_is_model"]:
        # spec 1.7: the decoder trunk itself is the encoder; no encoder_config, no encoder.* weights
        assert not enc
        del cfg["encoder_config"]
        cfg["encoder_hidden_size"] = base["hidden_size"]
    return cfg


def random_weights(model, seed, embed_std=1.0, eos_row_scale=None):
    """std 1/sqrt(fan_in) linears, N(0, embed_std) embeddings, norms 1+0.2*N(0,1).
    eos_row_scale: afterwards multiply lm_head.weight[EOS] by this (makes eos likelier; rng stream unchanged)."""
    rng = np.random.RandomState(seed)
    sd = {}
    for name, p in sorted(model.state_dict().items()):
        shape = tuple(p.shape)
        if name.endswith("norm.weight"):
            a = 1.0 + 0.2 * rng.randn(*shape)
        elif "embed_tokens" in name:
            a = embed_std * rng.randn(*shape)
        else:
            a = rng.randn(*shape) / np.sqrt(shape[1])
        sd[name] = a.astype(np.float32)
    if eos_row_scale is not None:
        assert not model.config.tie_word_embeddings
        sd["lm_head.weight"][EOS] *= np.float32(eos_row_scale)
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def rand_ids(rng, shape, vocab):
    return rng.randint(3, vocab, size=shape).astype(np.int64)  # avoid 0/1/2 (unk/bos/eos)


def make_inputs(rng, vocab, bsz, seq, n_ctx, ctx_len, dec_left_pad=None, chunk_pad=None):
    """dec_left_pad: {row: n}; chunk_pad: {(row, chunk): ('left'|'right'|'all', n)}."""
    ids = rand_ids(rng, (bsz, seq), vocab)
    mask = np.ones((bsz, seq), np.int64)
    for r in range(bsz):
        npad = (dec_left_pad or {}).get(r, 0)
        ids[r, :npad] = PAD_IN
        mask[r, :npad] = 0
        ids[r, npad] = BOS
    eids = rand_ids(rng, (bsz, n_ctx, ctx_len), vocab)
    emask = np.ones((bsz, n_ctx, ctx_len), np.int64)
    for (r, c), (kind, n) in (chunk_pad or {}).items():
        if kind == "all":
            sl = slice(0, ctx_len)
        elif kind == "left":
            sl = slice(0, n)
        else:
            sl = slice(ctx_len - n, ctx_len)
        eids[r, c, sl] = PAD_IN
        emask[r, c, sl] = 0
    return {k: torch.from_numpy(v) for k, v in
            dict(input_ids=ids, attention_mask=mask, encoder_input_ids=eids, encoder_attention_mask=emask).items()}


FIXTURES = [
    dict(name="gqa", seed=101,
         covers="GQA decoder (4 heads / 2 KV heads) in self- and cross-attention, GQA encoder (4/2), "
                "decoder rope_theta 500000 and rms_norm_eps 1e-5, encoder rope_theta 250000 and rms_norm_eps 1e-5",
         dec=dict(num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5),
         enc=dict(num_key_value_heads=2, rope_theta=250000.0, rms_norm_eps=1e-5),
         cepe={}, shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8)),
    dict(name="narrow-enc", seed=202,
         covers="encoder hidden 32 != decoder hidden 48 (cross k/v_proj [H, 32]); 4 decoder layers with "
                "cross-attention only in layers 2,3 (num_cross_attn_layers 2)",
         dec=dict(hidden_size=48, num_hidden_layers=4, intermediate_size=64),
         enc=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64),
         cepe=dict(num_cross_attn_layers=2), shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8)),
    dict(name="padded-batch", seed=303,
         covers="bsz 3; chunk padding: row0 chunk0 left-pad 3, chunk2 right-pad 2; row1 chunk0 right-pad 4, "
                "chunk1 FULLY padded, chunk2 full; row2 chunk1 left-pad 5, chunk2 right-pad 1; decoder row1 left-padded "
                "by 3 (pads id 0, BOS at first valid position). Compare logits only where logits_valid_mask=1 and encoder "
                "states only where encoder_valid_mask=1.",
         dec=dict(), enc=dict(), cepe={}, shape=dict(bsz=3, seq=10, n_ctx=3, ctx_len=8),
         dec_left_pad={1: 3},
         chunk_pad={(0, 0): ("left", 3), (0, 2): ("right", 2), (1, 0): ("right", 4), (1, 1): ("all", 8),
                    (2, 1): ("left", 5), (2, 2): ("right", 1)}),
    dict(name="tied", seed=404,
         covers="tie_word_embeddings true: model.safetensors has no lm_head.weight; logits use model.embed_tokens.weight",
         dec=dict(tie_word_embeddings=True), enc=dict(), cepe={}, embed_std=0.3,
         shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8)),
    dict(name="multi-hid", seed=505,
         covers="num_cross_attn_hidden_states 3, num_cross_attn_layers 3 of 4 decoder layers, 3-layer encoder: decoder "
                "layer i (1..3) reads encoder_hidden_states[i-4] = entry i of [emb, out L0, out L1, normed final]; "
                "all entries stored as encoder_hidden_states.{k}",
         dec=dict(hidden_size=48, num_hidden_layers=4, intermediate_size=64),
         enc=dict(hidden_size=48, num_hidden_layers=3, intermediate_size=64),
         cepe=dict(num_cross_attn_layers=3, num_cross_attn_hidden_states=3),
         shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8)),
    dict(name="with-query", seed=606,
         covers="encode_mode with_query_no_hid-4: the first 4 decoder tokens (and mask) are appended to every chunk "
                "before encoding (encoder length ctx_len+4, positions 0..ctx_len+3), then dropped from Phi; row1 chunk1 is "
                "right-padded by 3 so pads sit between context and query",
         dec=dict(), enc=dict(), cepe=dict(encode_mode="with_query_no_hid-4"),
         shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8), chunk_pad={(1, 1): ("right", 3)}),
    dict(name="rope-linear", seed=707,
         covers="rope_scaling {type: linear, factor: 2.0} on decoder and encoder (positions divided by 2)",
         dec=dict(rope_scaling={"type": "linear", "factor": 2.0}),
         enc=dict(rope_scaling={"type": "linear", "factor": 2.0}), cepe={},
         shape=dict(bsz=2, seq=12, n_ctx=3, ctx_len=8)),
    dict(name="rope-dynamic", seed=808,
         covers="rope_scaling {type: dynamic, factor: 2.0}; decoder max_position_embeddings 16 with seq 20 (NTK base "
                "rescaled for seq_len 20 in the forward); encoder max_position_embeddings 6 with ctx_len 8 (rescaled for 8)",
         dec=dict(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=16),
         enc=dict(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=6), cepe={},
         shape=dict(bsz=2, seq=20, n_ctx=2, ctx_len=8), stateful_rope=True),
    dict(name="encoder-is-model", seed=909,
         covers="encoder_is_model true (spec 1.7): no encoder_config and no encoder.* weights; the decoder trunk "
                "(self.model, same weights, CAUSAL self-attention, is_decoder) encodes every chunk with position_ids "
                "arange(ctx_len) (no position_ids are passed, even for padded chunks) and no cross-attention "
                "(no encoder states are passed on that call); Phi = the trunk's final-norm output; "
                "encoder_hidden_size = hidden_size 64; 3 decoder layers, cross-attention in layers 1,2 "
                "(num_cross_attn_layers 2); row0 chunk1 right-pad 3, row1 chunk0 left-pad 2",
         dec=dict(num_hidden_layers=3), enc=dict(), cepe=dict(encoder_is_model=True, num_cross_attn_layers=2),
         shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8),
         chunk_pad={(0, 1): ("right", 3), (1, 0): ("left", 2)}),
    dict(name="with-query-hid", seed=1111,
         covers="encode_mode with_query-3: the first 3 decoder tokens (and their attention_mask) are appended to "
                "every chunk before encoding (encoder length ctx_len+3, positions 0..ctx_len+2) and KEPT in Phi, so "
                "encoder_states is [b, n_ctx, ctx_len+3, He] and the cross-attention mask is the concatenated mask "
                "(encoder_valid_mask, same [b, n_ctx, ctx_len+3]); decoder row1 left-padded by 2 (so its appended query "
                "has 2 masked positions); row0 chunk2 right-padded by 2, row1 chunk1 left-padded by 1. FORWARD ONLY: "
                "the reference's cached generation crashes in this mode (see generation)",
         dec=dict(), enc=dict(), cepe=dict(encode_mode="with_query-3"),
         shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8), dec_left_pad={1: 2},
         chunk_pad={(0, 2): ("right", 2), (1, 1): ("left", 1)}, no_generation=True),
    dict(name="mqa-wide-enc", seed=1212,
         covers="MQA decoder (4 heads / 1 KV head) in self- and cross-attention; encoder WIDER than the decoder "
                "(encoder hidden 96, 6 heads / 3 KV heads, head_dim 16; decoder hidden 64; cross k/v_proj [16, 96]); "
                "cross-attention in all layers; decoder pretraining_tp 2 (the reference computes the self- and "
                "cross-attention q/k/v/o and the MLP projections as 2 slices, summed for o_proj/down_proj: numerically "
                "equivalent to the plain matmuls up to float rounding; LlamaForCausalContextLM's lm_head is not split; "
                "encoder pretraining_tp 1); rms_norm_eps 1e-5 decoder / 1e-6 encoder; bsz 2 with one row generating "
                "eos (2) before the 8 steps end (that row is then padded with eos=2 while the other row continues); "
                "lm_head.weight[2] scaled x3 at init to make eos likely",
         dec=dict(num_key_value_heads=1, pretraining_tp=2, rms_norm_eps=1e-5),
         enc=dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=64,
                  rms_norm_eps=1e-6),
         cepe={}, shape=dict(bsz=2, seq=10, n_ctx=3, ctx_len=8), eos_row_scale=3.0, require_eos=True),
    dict(name="long-chunks-batch", seed=1313,
         covers="bsz 2, n_ctx 5, ctx_len 24, decoder seq 30 with attention_mask all ones; chunk padding: row0 chunk0 "
                "left-pad 5, chunk2 right-pad 10, chunk4 right-pad 23 (one valid token); row1 chunk1 left-pad 20, "
                "chunk2 left-pad 1, chunk3 right-pad 7; other chunks full; decoder rope_theta 1e6; 3 decoder layers "
                "with cross-attention only in the last one (num_cross_attn_layers 1); vocab 128 (size budget)",
         dec=dict(num_hidden_layers=3, rope_theta=1000000.0, vocab_size=128), enc=dict(vocab_size=128),
         cepe=dict(num_cross_attn_layers=1),
         shape=dict(bsz=2, seq=30, n_ctx=5, ctx_len=24),
         chunk_pad={(0, 0): ("left", 5), (0, 2): ("right", 10), (0, 4): ("right", 23),
                    (1, 1): ("left", 20), (1, 2): ("left", 1), (1, 3): ("right", 7)}),
]


def np_(t):
    return t.detach().cpu().numpy()


MIN_GEN_GAP = 2e-3    # top1-top2 logit gap required at every greedy step (token exactness margin)
MIN_VALID_GAP = 5e-4  # same for forward logits at valid positions


def compute(fx, cfg, seed):
    proto = build_model(cfg)
    sd = random_weights(proto, seed, fx.get("embed_std", 1.0), fx.get("eos_row_scale"))
    del proto
    sh = fx["shape"]
    rng = np.random.RandomState(seed + 1)
    inp = make_inputs(rng, cfg["vocab_size"], sh["bsz"], sh["seq"], sh["n_ctx"], sh["ctx_len"],
                      fx.get("dec_left_pad"), fx.get("chunk_pad"))
    pos = pos_from_mask(inp["attention_mask"])
    # every pass on a FRESH model instance (the reference's rotary cache is stateful for dynamic NTK)
    out = forward(fresh(cfg, sd), inp, position_ids=pos)
    out_nc = forward(fresh(cfg, sd), inp, with_context=False, position_ids=pos)
    vm = inp["attention_mask"].bool()
    t2 = out.logits.topk(2, -1).values
    vgap = float((t2[..., 0] - t2[..., 1])[vm].min())
    if fx.get("no_generation"):
        return sd, inp, pos, out, out_nc, None, None, vgap, float("inf")
    seqs, scores = greedy(fresh(cfg, sd), inp)
    s2 = scores.topk(2, -1).values
    gap = s2[..., 0] - s2[..., 1]
    # only steps where the row was still unfinished matter
    prompt = sh["seq"]
    live = torch.ones_like(gap, dtype=torch.bool)
    for r in range(gap.shape[0]):
        for s in range(1, gap.shape[1]):
            live[r, s] = live[r, s - 1] and int(seqs[r, prompt + s - 1]) != EOS
    ggap = float(gap[live].min())
    return sd, inp, pos, out, out_nc, seqs, scores, vgap, ggap


def eos_ok(seqs, fx):
    """some row emits eos at one of the first MAX_NEW-1 steps (so eos padding follows) and some row never does."""
    new = np_(seqs)[:, fx["shape"]["seq"]:]
    if new.shape[1] != MAX_NEW:
        return False
    early = [(r == EOS)[:MAX_NEW - 1].any() for r in new]
    never = [not (r == EOS).any() for r in new]
    return any(early) and any(never)


def generation_crash(cfg, sd, inp):
    """Run the greedy loop expecting the reference to raise; return the error text."""
    try:
        greedy(fresh(cfg, sd), inp)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    raise SystemExit("expected the reference generation to crash, but it ran")


def build_fixture(fx, out_root):
    cfg = make_config(fx["dec"], fx["enc"], fx["cepe"])
    tried = []
    for attempt in range(40):
        seed = fx["seed"] + 1000 * attempt
        sd, inp, pos, out, out_nc, seqs, scores, vgap, ggap = compute(fx, cfg, seed)
        tried.append(seed)
        if ggap >= MIN_GEN_GAP and vgap >= MIN_VALID_GAP and (not fx.get("require_eos") or eos_ok(seqs, fx)):
            break
    else:
        raise SystemExit(f"{fx['name']}: no seed with enough argmax margin")
    fx = dict(fx, seed=seed)
    sh = fx["shape"]
    b, n_ctx, ctx_len = inp["encoder_input_ids"].shape

    logits = out.logits
    enc_list = out.encoder_hidden_states
    He = cfg["encoder_hidden_size"] if cfg["encoder_is_model"] else cfg["encoder_config"]["hidden_size"]
    enc_valid = inp["encoder_attention_mask"]
    enc_len = ctx_len
    if cfg["encode_mode"].startswith("with_query-"):  # query kept in Phi: concatenated ids/mask
        q = int(cfg["encode_mode"].split("-")[-1])
        enc_len = ctx_len + q
        enc_valid = torch.cat([enc_valid, inp["attention_mask"][:, None, :q].expand(-1, n_ctx, -1)], dim=2)
    enc_last = enc_list[-1].reshape(b, n_ctx, enc_len, He)
    logp = torch.log_softmax(logits, -1)
    tlp = torch.gather(logp[:, :-1], 2, inp["input_ids"][:, 1:, None])[..., 0]
    valid = inp["attention_mask"].clone()

    g = {k: np_(v) for k, v in inp.items()}
    g["position_ids"] = np_(pos)
    g["logits"] = np_(logits)
    g["logits_valid_mask"] = np_(valid)
    g["logits_no_context"] = np_(out_nc.logits)
    g["target_logprobs"] = np_(tlp)
    g["encoder_states"] = np_(enc_last)
    g["encoder_valid_mask"] = np_(enc_valid)
    if cfg["num_cross_attn_hidden_states"] > 1:
        for k, e in enumerate(enc_list):
            g[f"encoder_hidden_states.{k}"] = np_(e.reshape(b, n_ctx, enc_len, He))
    for k, h in enumerate(out.hidden_states):
        g[f"decoder_hidden_states.{k}"] = np_(h)
    crash = None
    if seqs is not None:
        g["generated_sequences"] = np_(seqs)
        g["generation_scores"] = np_(scores)
    else:
        crash = generation_crash(cfg, sd, inp)
    for k, v in g.items():
        if v.dtype != np.float32:
            g[k] = v.astype(np.int64)
        assert np.all(np.isfinite(g[k])), k

    # ---- self checks
    checks = {}
    d = os.path.join(out_root, f"ref-{fx['name']}")
    os.makedirs(d, exist_ok=True)
    st_io.write(os.path.join(d, "model.safetensors"), sd)
    sd2 = st_io.read(os.path.join(d, "model.safetensors"))
    re = forward(fresh(cfg, sd2), inp, position_ids=pos)
    checks["safetensors_reload_bitexact_logits"] = bool(torch.equal(re.logits, logits))
    assert checks["safetensors_reload_bitexact_logits"]
    vm = valid.bool()
    checks["max_abs_logits_change_from_context_valid"] = float((logits - out_nc.logits)[vm].abs().max())
    checks["logits_abs_max_valid"] = float(logits[vm].abs().max())
    if seqs is None:
        checks["cached_vs_uncached"] = "skipped: no generation goldens (the reference's cached generation crashes)"
    elif fx.get("stateful_rope"):
        checks["cached_vs_uncached"] = "skipped: dynamic-NTK rotary state changes with kv length, so cached and " \
                                       "uncached decoding legitimately differ in the reference"
    else:
        un = uncached_step_logits(fresh(cfg, sd), inp, seqs, scores.shape[1])
        dd = float((un - scores).abs().max())
        checks["max_abs_diff_cached_vs_uncached_step_logits"] = dd
        assert dd < 1e-4, dd
    if cfg["pretraining_tp"] > 1:  # sliced projections vs plain matmuls: equal up to rounding
        tp1 = forward(fresh(dict(cfg, pretraining_tp=1), sd), inp, position_ids=pos)
        dtp = float((tp1.logits - logits)[vm].abs().max())
        checks["max_abs_logits_diff_vs_pretraining_tp_1_valid"] = dtp
        assert dtp < 1e-4, dtp
    # argmax at valid positions not degenerate
    am = logits.argmax(-1)[vm]
    checks["distinct_argmax_tokens_valid"] = int(torch.unique(am).numel())
    checks["min_top1_top2_gap_valid"] = vgap
    if seqs is not None:
        checks["min_top1_top2_gap_generation_live_rows"] = ggap
    checks["seeds_tried"] = tried

    st_io.write(os.path.join(d, "golden.safetensors"), g)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    prompt = sh["seq"]
    if seqs is not None:
        new = np_(seqs)[:, prompt:]
        generation = {
            "method": "greedy, HF 4.34 greedy_search semantics re-implemented (step 1: full prompt + encoder inputs, "
                      "use_cache=True; later steps: last token, past_key_values, grown attention_mask, position_ids = "
                      "last of cumsum-1, encoder_hidden_states from step 1 and the [b,n_ctx,ctx_len] encoder mask); "
                      "argmax (first max); eos=2 finishes a row, finished rows then get pad=2; stop when all finished",
            "max_new_tokens": MAX_NEW,
            "eos_token_id": EOS,
            "pad_token_id_used": EOS,
            "new_tokens": new.tolist(),
            "n_steps_run": int(scores.shape[1]),
            "eos_generated": bool((new == EOS).any()),
            "generation_scores": "logits of the last position at each step [b, steps, V]",
        }
    else:
        generation = {
            "skipped": True,
            "reason": "the ORIGINAL reference cannot generate in encode_mode %s: step 1 returns Phi of length "
                      "n_ctx*(ctx_len+q) while the encoder_attention_mask passed back in at step 2 is the caller's "
                      "[b, n_ctx, ctx_len] mask, and forward() reshapes it with .view(b, Phi length), which raises. "
                      "No generated_sequences / generation_scores are stored; only the forward goldens (logits, "
                      "encoder_states, encoder_valid_mask, logits_no_context, decoder_hidden_states, target_logprobs)."
                      % cfg["encode_mode"],
            "reference_error_at_step_2": crash,
            "max_new_tokens_attempted": MAX_NEW,
        }
    encoder_layers = cfg["num_hidden_layers"] if cfg["encoder_is_model"] else cfg["encoder_config"]["num_hidden_layers"]
    init = "linear weights N(0, 1/fan_in); embed_tokens N(0, %g); every RMSNorm weight 1+0.2*N(0,1); numpy RandomState(seed) in sorted-name order; inputs from RandomState(seed+1)" % fx.get("embed_std", 1.0)
    if fx.get("eos_row_scale") is not None:
        init += "; then lm_head.weight[%d] (eos row) multiplied by %g" % (EOS, fx["eos_row_scale"])
    gj = {
        "name": f"ref-{fx['name']}",
        "covers": fx["covers"],
        "reference": REF_INFO,
        "seed": fx["seed"],
        "init": init,
        "shapes": dict(bsz=b, seq_len=prompt, n_ctx=n_ctx, ctx_len=ctx_len, vocab_size=cfg["vocab_size"],
                       decoder_hidden=cfg["hidden_size"], encoder_hidden=He,
                       decoder_layers=cfg["num_hidden_layers"], encoder_layers=encoder_layers,
                       cross_attn_layers=[i for i in range(cfg["num_hidden_layers"])
                                          if i >= cfg["num_hidden_layers"] - cfg["num_cross_attn_layers"]]),
        "n_params_in_model_safetensors": int(sum(v.size for v in sd.values())),
        "tied_weights_dropped_from_safetensors": ["lm_head.weight"] if cfg["tie_word_embeddings"] else [],
        "forward": "model(input_ids, attention_mask, position_ids, encoder_input_ids, encoder_attention_mask, "
                   "use_cache=False, output_hidden_states=True); position_ids = cumsum(attention_mask)-1 with pads set to 1 "
                   "(= arange for unpadded rows), stored as position_ids. logits_no_context: same call without encoder inputs.",
        "generation": generation,
        "notes": [],
        "self_checks": checks,
        "binary": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sorted(g.items())},
        "tolerances_suggested": "float32: logits/log-probs atol 1e-4; encoder states atol 1e-4 on encoder_valid_mask rows; "
                                "tokens exact",
    }
    if fx.get("stateful_rope"):
        gj["notes"].append(
            "Dynamic NTK rotary embedding in the reference is STATEFUL: LlamaDynamicNTKScalingRotaryEmbedding recomputes "
            "inv_freq (base*((factor*L/max_pos)-(factor-1))^(d/(d-2))) whenever it sees a kv length L greater than the "
            "length it last cached, and keeps it. logits and logits_no_context each come from a FRESH model instance (one "
            "forward at seq_len 20 -> base for L=20). generated_sequences comes from another FRESH instance: step 1 uses "
            "the base for L=20; each later step sees L=21,22,... and recomputes the base for that L, applied to the new "
            "token's q/k only, while cached keys keep the rotation they were computed with. Encoder: every chunk has "
            "length 8 > max_position_embeddings 6, so the encoder always uses the base for L=8.")
    if enc_len != ctx_len:
        gj["shapes"]["encoder_states_len"] = enc_len
        gj["notes"].append("encoder_states / encoder_valid_mask have ctx_len+%d = %d positions per chunk: the chunk's "
                           "%d tokens then the first %d decoder tokens (input_ids[:, :%d], mask attention_mask[:, :%d]), "
                           "encoded together with position_ids 0..%d. The decoder's cross-attention reads all of them "
                           "under that concatenated mask." % (enc_len - ctx_len, enc_len, ctx_len, enc_len - ctx_len,
                                                              enc_len - ctx_len, enc_len - ctx_len, enc_len - 1))
    if cfg["encoder_is_model"]:
        gj["shapes"]["encoder"] = "decoder trunk (encoder_is_model): model.* weights, causal, no cross-attention"
        gj["notes"].append("encoder_is_model: Phi = self.model(input_ids=chunks [b*n_ctx, ctx_len], attention_mask=chunk "
                           "mask, no position_ids -> arange(ctx_len) also for left-padded chunks, causal mask + padding "
                           "mask, cross-attention layers skipped because no encoder states are given).last_hidden_state "
                           "(after model.norm). encoder_states rows with encoder_valid_mask=0 are garbage.")
    if fx.get("require_eos"):
        gj["notes"].append("eos (2) is generated: after a row emits eos its later tokens are pad=eos=2 (its later "
                           "generation_scores are still the model's logits for that row); generation stops early only "
                           "when every row has finished.")
    if fx.get("dec_left_pad"):
        gj["notes"].append("logits at positions with logits_valid_mask=0 (left pads) are implementation-defined garbage; "
                           "encoder_states rows with encoder_valid_mask=0 likewise (a fully padded chunk gives uniform "
                           "attention over its own pads in the eager reference).")
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(gj, f, indent=1)
        f.write("\n")
    sizes = {fn: os.path.getsize(os.path.join(d, fn)) for fn in sorted(os.listdir(d))}
    total = sum(sizes.values())
    print(f"ref-{fx['name']}: {sizes} total={total}  checks={json.dumps(checks)}")
    assert total < 1 << 20, f"fixture too big: {total}"
    return d, sizes


def main():
    global REF, REF_INFO
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    assert configuration_utils.FORCE_EAGER_ATTENTION
    REF, REF_INFO = load_reference()
    tiny = check_tiny_a()
    REF_INFO = dict(REF_INFO, tiny_a_self_check=tiny)
    if args.check_only:
        return
    for fx in FIXTURES:
        if args.only and fx["name"] not in args.only:
            continue
        build_fixture(fx, args.out)


if __name__ == "__main__":
    main()
