#!/usr/bin/env bash
# The learning runs of docs/training.md ("Learning runs"): a small decoder, an MLM encoder, the warmup
# (duplicate, init_mode copy) and the standard CEPE stage, each a `cepe train` run, in order, on CPython's
# standard library (code: real text, already on every machine).
#
#   scripts/learning-runs.sh [STEP...]     STEP = corpus decoder mlm warmup cepe warmup-decenc cepe-decenc warmup-decenc-2 warmup-decenc-long mlm-long mlm-fromdec warmup-fromdec warmup-fromdec-6k mlm-fromdec4 warmup-fromdec4 cepe-fromdec4 summary
#                                          (default: all, in order)
#
# Environment: CEPE (the binary, default build/bin/cepe), LEARN_DIR (work folder, default build/learning),
# THREADS (default 1), PYLIB (the stdlib folder, default /usr/lib/python3.11). Needs spm_train (Debian: sentencepiece). Resumable: a stage whose final checkpoint
# exists is skipped, one with an earlier checkpoint continues with --resume (exactly), so rerun after a kill.
# The configs are configs/learning/*.json; their paths are relative to LEARN_DIR, where the runs execute.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CEPE=${CEPE:-$ROOT/build/bin/cepe}
DIR=${LEARN_DIR:-$ROOT/build/learning}
THREADS=${THREADS:-1}
PYLIB=${PYLIB:-/usr/lib/python3.11}   # Debian bookworm's python3.11 (python3-minimal); the runs used this one
STATS="python3 $ROOT/scripts/learning_stats.py"
[ -x "$CEPE" ] || { echo "error: $CEPE not found (build first, or set CEPE)" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"

corpus() {
  if [ -f data/train.tokens ] && [ -f data/held.tokens ]; then echo "corpus: data/*.tokens exist, kept"; return; fi
  rm -rf corpus data && mkdir -p corpus/train corpus/held data
  # Every .py file of the stdlib outside tests, site/dist-packages, encodings (code-page tables) and pydoc_data,
  # in byte order; every 10th file is held out (the split is by whole files).
  (cd "$PYLIB" && find . -name '*.py' -not -path '*/test/*' -not -path '*/tests/*' -not -path './site-packages/*' \
      -not -path './dist-packages/*' -not -path '*/idle_test/*' -not -path './encodings/*' -not -path './pydoc_data/*' \
      -not -path '*/__pycache__/*' | LC_ALL=C sort) > corpus/files.txt
  local i=0 f dst
  while read -r f; do
    if [ $((i % 10)) -eq 0 ]; then dst=held; else dst=train; fi
    cp "$PYLIB/$f" "corpus/$dst/$(printf %04d $i)-$(echo "${f#./}" | tr / _)"
    i=$((i + 1))
  done < corpus/files.txt
  # A 4096-piece BPE tokenizer of the training files (LLaMA's options: byte fallback, split digits, spaces kept).
  # With the 512-piece fixture tokenizer (about characters) copying needs long n-gram matches and the warmup
  # did not learn it in minutes; see docs/training.md.
  command -v spm_train > /dev/null || { echo "error: spm_train not found (apt-get install sentencepiece)" >&2; exit 1; }
  mkdir -p spm
  LC_ALL=C cat corpus/train/* > spm/train.txt
  spm_train --input=spm/train.txt --model_prefix=spm/py4k --vocab_size=4096 --model_type=bpe --byte_fallback=true \
    --split_digits=true --character_coverage=1.0 --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true \
    --max_sentence_length=100000 --num_threads=1 --input_sentence_size=2000000 --shuffle_input_sentence=true \
    --seed_sentencepiece_size=200000 > spm/train.log 2>&1
  cp spm/py4k.model tokenizer.model
  "$CEPE" data tokenize -m tokenizer.model -o data/train.tokens -t "$THREADS" corpus/train
  "$CEPE" data tokenize -m tokenizer.model -o data/held.tokens -t "$THREADS" corpus/held
  echo "unigram loss of the held-out tokens under the train unigram: $($STATS unigram data/train.tokens data/held.tokens)"
}

stage() {
  local name=$1 cfg="$ROOT/configs/learning/$1.json" out steps
  out=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["output_dir"])' "$cfg")
  steps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"])' "$cfg")
  if [ -f "$out/checkpoint-$steps/trainer_state.json" ]; then echo "$name: done ($out/checkpoint-$steps)"; return; fi
  local resume=()
  if compgen -G "$out/checkpoint-*/trainer_state.json" > /dev/null; then resume=(--resume); fi
  mkdir -p plots
  "$CEPE" train --config "$cfg" -t "$THREADS" --plot "plots/$name.png" "${resume[@]}"
}

summary() {
  echo "unigram: $($STATS unigram data/train.tokens data/held.tokens)"
  for s in decoder mlm warmup cepe warmup-decenc cepe-decenc warmup-decenc-2 warmup-decenc-long mlm-long mlm-fromdec \
      warmup-fromdec warmup-fromdec-6k mlm-fromdec4 warmup-fromdec4 cepe-fromdec4; do [ -f "runs/$s/log.jsonl" ] && $STATS summary "runs/$s"; done
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(corpus decoder mlm warmup cepe warmup-decenc cepe-decenc warmup-decenc-2 warmup-decenc-long mlm-long mlm-fromdec warmup-fromdec warmup-fromdec-6k mlm-fromdec4 warmup-fromdec4 cepe-fromdec4 summary)
for s in "${steps[@]}"; do
  case $s in
    corpus) corpus ;;
    decoder | mlm | warmup | cepe | warmup-decenc | cepe-decenc | warmup-decenc-2 | warmup-decenc-long | mlm-long | mlm-fromdec | \
      warmup-fromdec | warmup-fromdec-6k | mlm-fromdec4 | warmup-fromdec4 | cepe-fromdec4) stage "$s" ;;
    summary) summary ;;
    *) echo "error: unknown step '$s' (corpus decoder mlm warmup cepe warmup-decenc cepe-decenc warmup-decenc-2 warmup-decenc-long mlm-long mlm-fromdec warmup-fromdec warmup-fromdec-6k mlm-fromdec4 warmup-fromdec4 cepe-fromdec4 summary)" >&2; exit 1 ;;
  esac
done
