"""Goldens for the optimizer layer (src/train/optimizer.*, schedule.*): torch.optim.AdamW (default single-tensor
path), clip_grad_norm_ and Hugging Face's LambdaLR schedules, run for a few steps on small random fp32
parameters with random gradients. Writes tests/data/optim/golden.safetensors and golden.json (what is in it).

    /usr/bin/python3 tests/reference/make_optim_goldens.py [--out DIR]

Deterministic: re-running gives identical bytes. transformers is not needed: the schedule lambdas below are
written from transformers' formulas (optimization.py, get_scheduler: constant, constant_with_warmup, linear,
cosine with num_cycles 0.5), the warmup from TrainingArguments.get_warmup_steps (ceil(total * ratio)), and the
two parameter groups (decay / no decay) as Trainer.create_optimizer makes them.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

# torch picks its CPU kernels at run time (AVX2 or AVX-512), and they add in different orders: the goldens are
# torch's AVX2 kernels, whatever this machine has (src/train/optimizer.cpp follows their order).
os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


def lr_lambda(kind, warmup, total, num_cycles=0.5):
    def constant(step):
        return 1

    def constant_with_warmup(step):
        if step < warmup:
            return float(step) / float(max(1.0, warmup))
        return 1.0

    def linear(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    def cosine(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return {"constant": constant, "constant_with_warmup": constant_with_warmup, "linear": linear,
            "cosine": cosine}[kind]


def warmup_steps(total, ratio=None, steps=None):
    return steps if steps else math.ceil(total * ratio)


def uses_weight_decay(name):
    # The rule of src/train/optimizer.cpp (HF: no decay for biases and LayerNorm/RMSNorm weights).
    return not ("bias" in name or "layernorm" in name or "layer_norm" in name or name.endswith("norm.weight"))


# Shapes with element counts that are a multiple of torch's AVX2 unroll (16), not one, and below it, so that
# both its vector loop and its scalar tail are compared.
PARAMS = [
    ("model.layers.0.self_attn.q_proj.weight", (8, 16)),
    ("model.layers.0.input_layernorm.weight", (37,)),
    ("lm_dense.bias", (5,)),
    ("model.embed_tokens.weight", (13, 7)),
]

RUNS = [
    # Gradients of norm ~16 against max_norm 1: clipping active at every step. Warmup from a ratio:
    # ceil(30 * 0.1) = 3.
    dict(name="clip", seed=1, steps=30, lr=5e-4, weight_decay=0.01, schedule="cosine", warmup_ratio=0.1,
         max_norm=1.0, grad_scale=1.0),
    # Gradients of norm ~0.3: clip_grad_norm_ runs but does not clip. Explicit warmup, linear decay.
    dict(name="noclip", seed=2, steps=30, lr=1e-3, weight_decay=0.1, schedule="linear", warmup_steps=5,
         max_norm=1.0, grad_scale=0.02),
]


def run(cfg, tensors):
    rng = np.random.RandomState(cfg["seed"])
    steps = cfg["steps"]
    warm = warmup_steps(steps, cfg.get("warmup_ratio"), cfg.get("warmup_steps"))
    params = {}
    for name, shape in PARAMS:
        init = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        tensors[f"{cfg['name']}.init.{name}"] = init
        params[name] = torch.nn.Parameter(torch.from_numpy(init.copy()))
    decay = [p for n, p in params.items() if uses_weight_decay(n)]
    no_decay = [p for n, p in params.items() if not uses_weight_decay(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg["schedule"], warm, steps))
    rows = {k: {n: [] for n, _ in PARAMS} for k in ("grad", "clipped_grad", "value", "exp_avg", "exp_avg_sq")}
    lrs, norms = [], []
    for _ in range(steps):
        for n, shape in PARAMS:
            g = (rng.standard_normal(shape) * cfg["grad_scale"]).astype(np.float32)
            rows["grad"][n].append(g)
            params[n].grad = torch.from_numpy(g.copy())
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["max_norm"])
        norms.append(norm.item())
        lr = opt.param_groups[0]["lr"]
        assert lr == opt.param_groups[1]["lr"]
        lrs.append(lr)
        opt.step()
        sched.step()
        for n, _ in PARAMS:
            p = params[n]
            rows["clipped_grad"][n].append(p.grad.numpy().copy())
            rows["value"][n].append(p.detach().numpy().copy())
            rows["exp_avg"][n].append(opt.state[p]["exp_avg"].numpy().copy())
            rows["exp_avg_sq"][n].append(opt.state[p]["exp_avg_sq"].numpy().copy())
            assert opt.state[p]["step"].item() == len(lrs)
        opt.zero_grad(set_to_none=True)
    for kind, per_param in rows.items():
        for n, seq in per_param.items():
            tensors[f"{cfg['name']}.{kind}.{n}"] = np.stack(seq).astype(np.float32)
    tensors[f"{cfg['name']}.grad_norm"] = np.array(norms, dtype=np.float32)
    clipped = [n > cfg["max_norm"] for n in norms]
    return dict(cfg, warmup=warm, lrs=lrs, clipped_steps=sum(clipped),
                params=[dict(name=n, shape=list(s), decay=uses_weight_decay(n)) for n, s in PARAMS])


SCHEDULES = [
    dict(kind="constant", base_lr=3e-4, total=20, warmup_ratio=0.0),
    dict(kind="constant_with_warmup", base_lr=3e-4, total=20, warmup_steps=7),
    dict(kind="linear", base_lr=1e-3, total=25, warmup_ratio=0.04),
    dict(kind="cosine", base_lr=5e-4, total=4000, warmup_ratio=0.04),  # spec 3.4: warmup 160 of 4,000
    dict(kind="cosine", base_lr=3e-4, total=33, warmup_ratio=0.1),
    dict(kind="cosine", base_lr=3e-4, total=10, warmup_ratio=0.0),
    # 100 * 0.07 = 7.000000000000001 in double, so HF's ceil gives 8 warmup steps, not 7.
    dict(kind="cosine", base_lr=1e-3, total=100, warmup_ratio=0.07),
]


def schedule_golden(s):
    warm = warmup_steps(s["total"], s.get("warmup_ratio"), s.get("warmup_steps"))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=s["base_lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(s["kind"], warm, s["total"]))
    # Every step up to total + 3 (past the end too), but only a sample of the long schedule.
    keep = set(range(s["total"] + 3)) if s["total"] <= 100 else set(range(0, s["total"] + 3, 37)) | {159, 160, 161}
    steps, lrs = [], []
    for k in range(s["total"] + 3):
        if k in keep:
            steps.append(k)
            lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return dict(s, warmup=warm, steps=steps, lrs=lrs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "optim"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tensors = {}
    runs = [run(cfg, tensors) for cfg in RUNS]
    schedules = [schedule_golden(s) for s in SCHEDULES]
    capability = [ln.split(":")[1].strip() for ln in torch.__config__.show().splitlines() if "CPU capability" in ln]
    assert capability == ["AVX2"], f"torch runs {capability} kernels, expected AVX2"
    meta = {"format": "cepe.optim-golden", "torch": torch.__version__, "cpu_capability": capability[0],
            "runs": runs, "schedules": schedules}
    os.makedirs(args.out, exist_ok=True)
    st_io.write(os.path.join(args.out, "golden.safetensors"), tensors,
                {"format": "pt", "golden": json.dumps(meta, sort_keys=True)})
    described = dict(meta)
    described["tensors"] = {
        "<run>.init.<param>": "the parameter before the first step, F32 [shape]",
        "<run>.grad.<param>": "the raw random gradient of every step, F32 [steps, shape]",
        "<run>.clipped_grad.<param>": "the gradient after clip_grad_norm_ (what AdamW used), F32 [steps, shape]",
        "<run>.value.<param>": "the parameter after each step, F32 [steps, shape]",
        "<run>.exp_avg.<param>, <run>.exp_avg_sq.<param>": "AdamW's moments after each step, F32 [steps, shape]",
        "<run>.grad_norm": "clip_grad_norm_'s returned total norm per step, F32 [steps]",
    }
    described["note"] = ("The same JSON (without 'tensors' and 'note') is the safetensors metadata key 'golden'; "
                         "lrs are the learning rates each optimizer step used (LambdaLR, Python doubles).")
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(described, f, indent=1, sort_keys=True)
        f.write("\n")
    for r in runs:
        print(f"run {r['name']}: warmup {r['warmup']}, clipped at {r['clipped_steps']} of {r['steps']} steps, "
              f"grad norm {min(tensors[r['name'] + '.grad_norm']):.4g}..{max(tensors[r['name'] + '.grad_norm']):.4g}")


if __name__ == "__main__":
    main()
