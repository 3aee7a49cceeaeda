#!/usr/bin/env python3
"""Helpers for scripts/learning-runs.sh (standard library only).

  learning_stats.py unigram TRAIN.tokens HELD.tokens
      The held-out loss of the train set's unigram distribution (add-one smoothed over the
      vocabulary), in nats/token, over the positions the decoder stage scores: every token of a
      window but its first (the model predicts token t+1 from tokens <= t).
  learning_stats.py summary RUN_DIR [RUN_DIR...]
      From each run's log.jsonl: steps, wall time, first and last held-out losses (with and
      without context), and for CEPE stages the ratio with/without.
"""
import array
import json
import math
import os
import struct
import sys


def read_tokens(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header["__metadata__"]
    t = header["tokens"]
    a, b = t["data_offsets"]
    toks = array.array("i")
    toks.frombytes(data[a:b])
    if sys.byteorder != "little":
        toks.byteswap()
    return toks, int(meta["vocab_size"])


def unigram(train, held):
    tr, vocab = read_tokens(train)
    he, _ = read_tokens(held)
    counts = [0] * vocab
    for t in tr:
        counts[t] += 1
    total = len(tr)
    logp = [math.log((c + 1) / (total + vocab)) for c in counts]
    # The decoder layout cuts the concatenated held-out stream into windows; every token but the
    # first of the stream is a target somewhere. Over millions of tokens the difference is nil.
    s = -sum(logp[t] for t in he[1:])
    return s / (len(he) - 1)


def summary(run):
    evals, steps, elapsed = [], 0, 0.0
    with open(os.path.join(run, "log.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if j.get("event") == "eval":
                evals.append(j)
            else:
                steps = j["step"]
                elapsed = j.get("elapsed_s", elapsed)
    out = {"run": run, "steps": steps, "elapsed_s": round(elapsed, 1)}
    if evals:
        for tag, e in (("first", evals[0]), ("last", evals[-1])):
            out[tag] = {"step": e["step"], "eval_loss": round(e["eval_loss"], 4)}
            if "eval_loss_no_context" in e:
                out[tag]["eval_loss_no_context"] = round(e["eval_loss_no_context"], 4)
                out[tag]["ratio"] = round(e["eval_loss"] / e["eval_loss_no_context"], 4)
    return out


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "unigram":
        print(f"{unigram(sys.argv[2], sys.argv[3]):.4f}")
    elif len(sys.argv) >= 3 and sys.argv[1] == "summary":
        for r in sys.argv[2:]:
            print(json.dumps(summary(r)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
