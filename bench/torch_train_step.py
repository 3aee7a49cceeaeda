#!/usr/bin/python3
"""The PyTorch side of `cepe bench train` (bench/train_vs_torch.sh): one training step of the same model in
the ORIGINAL reference code, timed the way cepe.cpp's step is timed.

* The reference `modeling_llama_flash.py` is read from the git mirror and imported unmodified, with our
  transformers shim and eager attention, exactly as tests/reference/make_goldens.py does it (that module
  is imported for it). float32, CPU, Debian's python3-torch; nothing is built.
* The step is what train.py's HF Trainer does per optimizer step, without data loading: forward with
  labels (the model's own shifted cross-entropy), loss.backward(), clip_grad_norm_(trainable, 1.0),
  AdamW.step(), zero_grad().  AdamW is torch's default (single-tensor, lr 1e-4, weight decay 0), as
  the C++ side is configured.
* The trainable sets are train.py's: every parameter for LlamaForCausalLM; `cross_attn` in the name or
  `encoder` in the name (--train_encoder) for the CEPE stage, with model.train_encoder = True.

Prints one JSON object: per-step seconds, tokens per step, peak RSS (ru_maxrss), threads, versions.

Usage: /usr/bin/python3 bench/torch_train_step.py --config bench/train/decoder.json --threads 2
           [--batch 8 --seq 256 --n-ctx 8 --ctx-len 64 --warmup 2 --steps 5 --seed 0]
"""
import argparse
import json
import os
import resource
import sys
import time

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))

import make_goldens as mg  # noqa: E402  (the shim, torch, the reference loader)
import torch  # noqa: E402
import transformers  # noqa: E402  (the shim)


def build(cfg):
    arch = cfg["architectures"][0]
    if arch == "LlamaForCausalContextLM":
        return mg.build_model(cfg)
    assert arch == "LlamaForCausalLM", arch
    c = dict(cfg)
    c["is_decoder"] = True  # train.py sets it before building the model (see make_grad_goldens.build)
    model = mg.REF.LlamaForCausalLM(transformers.LlamaConfig.from_dict(c))
    assert model.model.is_decoder
    for m in model.modules():
        assert not isinstance(m, (mg.REF.LlamaFlashAttention2, mg.REF.LlamaCrossFlashAttention2)), "flash module built"
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--n-ctx", type=int, default=8)
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    mg.REF, mg.REF_INFO = mg.load_reference()
    cfg = json.load(open(a.config))
    model = build(cfg)
    model.float()
    model.train()
    cepe = cfg["architectures"][0] == "LlamaForCausalContextLM"
    if cepe:
        model.train_encoder = True  # --train_encoder: the encoder output is not detached
    params = []
    for n, p in model.named_parameters():
        p.requires_grad = (not cepe) or "cross_attn" in n or "encoder" in n
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    V = cfg["vocab_size"]
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(3, V, (a.batch, a.seq), generator=g)
    kw = dict(input_ids=ids, labels=ids.clone(), use_cache=False, return_dict=True)
    tokens = a.batch * a.seq
    if cepe:
        kw["encoder_input_ids"] = torch.randint(3, V, (a.batch, a.n_ctx, a.ctx_len), generator=g)
        kw["encoder_attention_mask"] = torch.ones(a.batch, a.n_ctx, a.ctx_len, dtype=torch.long)
        tokens += a.batch * a.n_ctx * a.ctx_len

    def step():
        out = model(**kw)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return float(out.loss)

    losses, times = [], []
    t_start = time.perf_counter()
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        print(f"torch step {i + 1}: {dt:.3f} s", file=sys.stderr, flush=True)
        if i >= a.warmup:
            times.append(dt)
            losses.append(loss)
    print(json.dumps({
        "impl": "pytorch",
        "config": os.path.basename(a.config),
        "threads": a.threads,
        "torch_threads": torch.get_num_threads(),
        "batch": a.batch, "seq": a.seq, "n_ctx": a.n_ctx if cepe else 0, "ctx_len": a.ctx_len if cepe else 0,
        "decoder_tokens_per_step": a.batch * a.seq,
        "tokens_per_step": tokens,
        "trainable_params": sum(p.numel() for p in params),
        "step_seconds": times,
        "losses": losses,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
        "parallel_info": [l.strip() for l in torch.__config__.parallel_info().splitlines() if "ATen" in l or "OpenMP" in l or "MKL" in l][:4],
        "reference": mg.REF_INFO["source"],
    }))


if __name__ == "__main__":
    main()
