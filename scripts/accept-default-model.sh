#!/usr/bin/env bash
# The acceptance figures of a CEPE model (docs/evaluation.md, "Results"), every one by the commands users run:
#
#   passkey     retrieval at 64x the decoder window (16384 tokens) x 5 needle depths, TRIALS (default 20) each
#               (4 per depth cannot tell 95% from 100%: 95% of 4 rounds up to all 4), in-process
#               (cepe passkey) and through text mode (cepe generate -c CASE.txt -p QUESTION), then the heat map
#               over 1024..16384 tokens
#   perplexity  held-out documents of the five domains: cepe, vanilla, streaming and replug on the same scored
#               tokens, context 0..8192 (32x the window), WINDOWS (default 16) windows each; JSON + plot per domain
#   ooc         the same on text that is neither in the repository nor in the corpus: GNU info manuals that
#               every Debian machine has (coreutils, gettext)
#
#   bash scripts/accept-default-model.sh [-m MODEL] [-o DIR] [STEP...]   (default models/cepe-tiny, build/accept,
#                                                                        all steps: passkey perplexity ooc)
# Prints every table; the JSON, tables and PNGs go to DIR. Needs the held-out corpus (scripts/fetch-corpus.sh
# --held-only).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CEPE=${CEPE:-$ROOT/build/bin/cepe}
MODEL=$ROOT/models/cepe-tiny; DIR=$ROOT/build/accept; HELD=${CORPUS:-$ROOT/build/corpus}/held
steps=()
while [ $# -gt 0 ]; do
  case $1 in
    -m) MODEL=$2; shift 2 ;;
    -o) DIR=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    passkey | perplexity | ooc) steps+=("$1"); shift ;;
    *) echo "error: unknown argument '$1' (steps: passkey perplexity ooc)" >&2; exit 1 ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || steps=(passkey perplexity ooc)
[ -x "$CEPE" ] || { echo "error: $CEPE not found (build first)" >&2; exit 1; }
[ -d "$HELD/books" ] || { echo "error: $HELD/books not found (bash scripts/fetch-corpus.sh --held-only)" >&2; exit 1; }
mkdir -p "$DIR"
LENGTHS=0,256,512,1024,2048,4096,8192; WINDOWS=${WINDOWS:-16}; TRIALS=${TRIALS:-20}
PROTOCOLS=cepe,vanilla,streaming,replug

passkey() {
  CEPE=$CEPE bash "$ROOT/scripts/passkey-generate.sh" -m "$MODEL" -f "$HELD/books" --context-tokens 16384 --trials "$TRIALS" \
    -o "$DIR/passkey-16k" | tee "$DIR/passkey-16k.txt"
  "$CEPE" passkey -m "$MODEL" -f "$HELD/books" --context-tokens 1024,4096,16384 --trials 4 --seed 1 \
    --json "$DIR/passkey.json" --plot "$DIR/passkey.png" -q | tee "$DIR/passkey.txt"
}

perplexity() {
  local d
  for d in books science math code docs; do
    echo "== held-out $d"
    "$CEPE" perplexity -m "$MODEL" -f "$HELD/$d" --protocol $PROTOCOLS --context-tokens $LENGTHS --max-windows "$WINDOWS" \
      --json "$DIR/ppl-$d.json" --plot "$DIR/ppl-$d.png" | tee "$DIR/ppl-$d.txt"
  done
}

ooc() {
  local m
  mkdir -p "$DIR/ooc"
  for m in coreutils gettext; do
    [ -f "/usr/share/info/$m.info.gz" ] || { echo "error: /usr/share/info/$m.info.gz not found" >&2; exit 1; }
    zcat "/usr/share/info/$m.info.gz" > "$DIR/ooc/$m.txt"
    echo "== out of corpus: $m.info"
    "$CEPE" perplexity -m "$MODEL" -f "$DIR/ooc/$m.txt" --protocol $PROTOCOLS --context-tokens $LENGTHS \
      --max-windows "$WINDOWS" --json "$DIR/ooc-$m.json" --plot "$DIR/ooc-$m.png" | tee "$DIR/ooc-$m.txt"
  done
}

for s in "${steps[@]}"; do "$s"; done
echo "accept: tables, JSON and PNGs in $DIR"
