#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ from the fixtures in tests/data (small files, real
formats: libFuzzer mutates from there). Rerun after a format change; the files are committed.
    python3 tests/fuzz/make_corpus.py [path/to/cepe]     # the CLI makes the encoded-context seeds
"""
import json
import os
import shutil
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, order=None):
    """tensors: name -> (dtype, shape, raw bytes); laid out in `order` (default: sorted), gap-free."""
    header, blob = {}, b""
    for name in order or sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    data = b[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items()}, meta


def i64_rows(raw, shape):
    flat = list(struct.unpack("<%dq" % (len(raw) // 8), raw))
    def nest(vals, dims):
        if len(dims) == 1:
            return vals
        step = len(vals) // dims[0]
        return [nest(vals[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]
    return nest(flat, shape)


def main():
    cepe = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "bin", "cepe")
    shutil.rmtree(OUT, ignore_errors=True)

    # safetensors: every dtype, scalar and empty tensors, a misaligned offset, an empty header, a trimmed golden.
    def raw(dtype, n):
        return bytes((7 * i + 3) % 251 for i in range(n * SIZES[dtype]))
    write("safetensors", "all_dtypes.safetensors", safetensors(
        {"f32": ("F32", [2, 3], struct.pack("<6f", 0.5, -1, 2, 3.25, 0, 1e-3)), "f16": ("F16", [3], raw("F16", 3)),
         "bf16": ("BF16", [2, 2], raw("BF16", 4)), "i64": ("I64", [2], struct.pack("<2q", -1, 1 << 40)),
         "i32": ("I32", [1], struct.pack("<i", 7)), "i8": ("I8", [4], raw("I8", 4)), "u8": ("U8", [3], raw("U8", 3)),
         "bool": ("BOOL", [2], b"\x00\x01")}, {"format": "pt"}, order=["f32", "i64", "f16", "bf16", "i32", "i8", "u8", "bool"]))
    write("safetensors", "scalar_empty.safetensors", safetensors(
        {"scalar": ("F32", [], struct.pack("<f", 3.0)), "empty": ("F32", [0, 4], b""), "zero_dim": ("I64", [2, 0], b"")}))
    write("safetensors", "misaligned.safetensors", safetensors(
        {"a": ("U8", [2], b"\x01\x02"), "b": ("F32", [2], struct.pack("<2f", 1, 2))}, order=["a", "b"]))
    write("safetensors", "empty_header.safetensors", safetensors({}, {}))
    golden, meta = read_safetensors(os.path.join(DATA, "cepe-tiny-a", "golden.safetensors"))
    keep = ["input_ids", "attention_mask", "encoder_input_ids", "encoder_attention_mask", "target_logprobs"]
    write("safetensors", "golden_trimmed.safetensors", safetensors({k: golden[k] for k in keep}, meta))

    # config.json: every fixture's.
    for d in sorted(os.listdir(DATA)):
        p = os.path.join(DATA, d, "config.json")
        if os.path.exists(p):
            write("config", d + ".json", open(p, "rb").read())

    # request JSON (README.md, docs/cli.md): minimal, masked + positions, with a context, a padded batch.
    write("request", "minimal.json", json.dumps({"input_ids": [[1, 32, 50, 132]]}))
    write("request", "masked.json", json.dumps({"input_ids": [[1, 5, 6], [0, 1, 9]],
                                                "attention_mask": [[1, 1, 1], [0, 1, 1]],
                                                "position_ids": [[0, 1, 2], [0, 0, 1]]}))
    req = {k: i64_rows(golden[k][2], golden[k][1])
           for k in ["input_ids", "attention_mask", "encoder_input_ids", "encoder_attention_mask"]}
    write("request", "tiny_a_context.json", json.dumps(req, separators=(",", ":")))
    padded, _ = read_safetensors(os.path.join(DATA, "ref-padded-batch", "golden.safetensors"))
    req = {k: i64_rows(padded[k][2], padded[k][1])
           for k in ["input_ids", "attention_mask", "position_ids", "encoder_input_ids", "encoder_attention_mask"]}
    write("request", "padded_batch.json", json.dumps(req, indent=1))

    # Encoded contexts of the tiny model (load_context checks the encoder fingerprint, so they must be real).
    model = os.path.join(DATA, "cepe-tiny-a")
    ctx = os.path.join(OUT, "context")
    os.makedirs(ctx, exist_ok=True)
    for name, args in [("hello_f32.ctx", ["--context-text", "hello world", "--chunk-len", "8"]),
                       ("two_docs_bf16.ctx", ["--context-text", "hello world", "--context-text",
                                              "The quick brown fox jumps over the lazy dog.", "--chunk-len", "4",
                                              "--ctx-dtype", "bf16"])]:
        subprocess.run([cepe, "encode", "-m", model, *args, "-o", os.path.join(ctx, name), "-t", "1"], check=True,
                       stdout=subprocess.DEVNULL)
    write("safetensors", "context.safetensors", open(os.path.join(ctx, "hello_f32.ctx"), "rb").read())

    # Token files: real ones from `cepe data tokenize` (text + jsonl) and a hand-made one with an empty document.
    texts = os.path.join(OUT, "token_file", "_inputs")
    os.makedirs(texts, exist_ok=True)
    with open(os.path.join(texts, "a.txt"), "w") as f:
        f.write("The quick brown fox jumps over the lazy dog. " * 4)
    with open(os.path.join(texts, "b.jsonl"), "w") as f:
        f.write(json.dumps({"text": "hello world"}) + "\n" + json.dumps({"text": "caf\u00e9 \u65e5\u672c"}) + "\n")
    tok_dir = os.path.join(OUT, "token_file")
    # Relative paths, so the committed file's metadata names no local directory.
    subprocess.run([os.path.abspath(cepe), "data", "tokenize", "-m", os.path.relpath(model, tok_dir), "-o", "tiny_a.tokens",
                    "-t", "1", "--quiet", "_inputs"], check=True, stdout=subprocess.DEVNULL, cwd=tok_dir)
    shutil.rmtree(texts)
    meta = {"format": "cepe.tokens", "format_version": "1", "tokenizer_sha256": "ab" * 32, "vocab_size": "16",
            "bos_id": "1", "eos_id": "2", "unk_id": "0", "n_docs": "3", "n_tokens": "12", "sources": "[\"hand\"]"}
    toks = [1, 5, 6, 7, 8, 2, 1, 2, 1, 9, 15, 2]
    write("token_file", "hand.tokens", safetensors({
        "doc_offsets": ("I64", [4], struct.pack("<4q", 0, 6, 8, 12)),
        "tokens": ("I32", [12], struct.pack("<12i", *toks))}, meta, order=["doc_offsets", "tokens"]))

    # grad requests (cepe grad): the gradient fixtures' own requests.
    for name in ("grad-gqa-kl-drop", "grad-mlm", "grad-padded-batch-kl-smooth"):
        write("request", name + ".json", open(os.path.join(DATA, name, "request.json"), "rb").read())

    # Training configs (docs/training.md) and a trainer state.
    dec = {"architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    write("train_config", "decoder.json", json.dumps({
        "stage": "decoder", "output_dir": "run", "model": {"config": dec, "seed": 1},
        "data": {"train": [{"files": ["train.tokens"]}], "eval": [{"files": ["held.tokens"]}], "seq_len": 64},
        "batch_size": 8, "grad_accum": 2, "steps": 100, "optimizer": {"lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"kind": "cosine", "warmup_ratio": 0.04}, "eval": {"every": 20, "batches": 4},
        "checkpoint": {"every": 20, "keep_last": 2}}, indent=1))
    write("train_config", "warmup.json", json.dumps({
        "stage": "warmup", "output_dir": "run", "model": {"decoder": "dec", "encoder": "mlm", "init_mode": "copy"},
        "trainable": "cross_attn,encoder",
        "data": {"train": [{"files": ["a.tokens"], "layout": "duplicate"}], "seq_len": 256, "n_ctx": 4, "ctx_len": 64,
                 "context_masking": {"mask_prob": 0.3, "mask_seq_prob": 0.1}},
        "steps": 4000, "optimizer": {"lr": 5e-4}}))
    write("train_config", "ceped.json", json.dumps({
        "stage": "ceped", "output_dir": "run", "model": {"checkpoint": "ck"},
        "data": {"train": [{"files": ["a.tokens"], "layout": "filtered", "weight": 2},
                           {"files": ["b.tokens"], "layout": "concat", "weight": 1}],
                 "seq_len": 2048, "n_ctx": 8, "ctx_len": 256, "teacher": "t.teacher"},
        "steps": 10, "loss": {"kl_loss_cof": 2, "kl_loss_mode": "smooth_1e-6"}}))
    write("train_config", "trainer_state.json", json.dumps({
        "format": "cepe.trainer", "version": 1, "step": 20, "config": {"stage": "decoder"},
        "history": {"train": [[1, 6.2], [2, 6.1]], "eval": [{"step": 0, "loss": 6.3, "loss_no_context": 6.4}]}}))

    # Teacher targets for fuzz_teacher.cpp's config (samples_of as nlohmann dumps it: sorted keys, compact).
    samples_of = json.dumps({"data": {"ctx_len": 2, "n_ctx": 2, "seq_len": 4,
                                      "train": [{"files": ["x.tokens"], "layout": "concat"}]}, "seed": 0},
                            sort_keys=True, separators=(",", ":"))
    n, t, k = 2, 4, 3
    idx = [(i * 7 + 3) % 16 for i in range(n * t * k)]
    half = {0.5: 0x3800, 0.25: 0x3400, 0.125: 0x3000}
    probs = []
    for _ in range(n * t):
        probs += [half[0.5], half[0.25], half[0.125], half[0.125]]
    write("teacher", "small.teacher", safetensors({
        "index": ("I32", [n, t, k], struct.pack("<%di" % len(idx), *idx)),
        "prob": ("F16", [n, t, k + 1], struct.pack("<%dH" % len(probs), *probs))},
        {"format": "cepe.teacher", "version": "1", "k": str(k), "seq_len": str(t), "samples": str(n), "teacher": "m",
         "samples_of": samples_of}))

    # The tiny fixture's tokenizer is already small (8 KB).
    write("tokenizer", "tiny_a.model", open(os.path.join(model, "tokenizer.model"), "rb").read())


if __name__ == "__main__":
    main()
