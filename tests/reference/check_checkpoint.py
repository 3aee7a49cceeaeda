#!/usr/bin/python3
"""Loads checkpoints that `cepe train` wrote with the ORIGINAL reference code and compares its logits with
`cepe forward` on the same random request: checkpoints are the HF layout with the reference's names, so the
reference's classes (LlamaForCausalLM, LlamaForMLM, LlamaForCausalContextLM) take them as they are (strict
load_state_dict: no missing tensor except a tied lm_head.weight, no unexpected one).

Usage: /usr/bin/python3 tests/reference/check_checkpoint.py [--cepe build/bin/cepe] CHECKPOINT_DIR...
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import make_goldens as mg  # noqa: E402
import make_grad_goldens as mgg  # noqa: E402
import st_io  # noqa: E402


def check(ckpt, cepe, rng):
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    sd = st_io.read(os.path.join(ckpt, "model.safetensors"))
    arch = cfg["architectures"][0]
    model = mgg.load(mgg.build(cfg), sd)
    model.eval()
    vocab = cfg["vocab_size"]
    bsz, seq = 2, 12
    req = {"input_ids": rng.integers(3, vocab - 1, size=(bsz, seq)).tolist()}
    if arch == "LlamaForCausalContextLM":
        enc_vocab = cfg["encoder_config"]["vocab_size"] if cfg.get("encoder_config") else vocab
        req["encoder_input_ids"] = rng.integers(3, enc_vocab - 1, size=(bsz, 2, 8)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        rq, out = os.path.join(tmp, "req.json"), os.path.join(tmp, "out.json")
        json.dump(req, open(rq, "w"))
        subprocess.run([cepe, "forward", "-m", ckpt, "--request", rq, "-o", out, "-t", "1"], check=True)
        ours = np.array(json.load(open(out))["logits"], dtype=np.float64)
    with torch.no_grad():
        kw = {"input_ids": torch.tensor(req["input_ids"])}
        if "encoder_input_ids" in req:
            kw["encoder_input_ids"] = torch.tensor(req["encoder_input_ids"])
        ref = model(**kw).logits.double().numpy()
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    print(f"{ckpt}: {arch}, {len(sd)} tensors loaded strictly; max |logit diff| {diff:.2e} (max |logit| {scale:.2f})")
    return diff <= 1e-4 * max(1.0, scale)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cepe", default=os.path.join(HERE, "..", "..", "build", "bin", "cepe"))
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mgg.REF, info = mg.load_reference()
    mg.REF = mgg.REF
    rng = np.random.default_rng(0)
    ok = all([check(c, os.path.abspath(args.cepe), rng) for c in args.checkpoints])
    print("all checkpoints agree" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
