#!/usr/bin/env bash
# The pass-key test through text mode, the way a user runs it: `cepe passkey --save-cases` writes each case's
# context as a text file, then every case is asked with `cepe generate -m MODEL -c CASE.txt -p QUESTION --greedy`
# (the file tokenized and chunked by generate itself) and the continuation compared with the key.
#
#   bash scripts/passkey-generate.sh [-m MODEL] [-f FILLER] [--context-tokens L] [--depths L] [--trials K] [-o DIR]
#
# Defaults: models/cepe-tiny, build/corpus/held/books (run scripts/fetch-corpus.sh --held-only), 16384 tokens
# (64x the shipped model's window), depths 0,0.25,0.5,0.75,1, 4 trials, DIR build/passkey-generate.
# Prints accuracy by length and depth; exit status 1 if a case fails to run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CEPE=${CEPE:-$ROOT/build/bin/cepe}
MODEL=$ROOT/models/cepe-tiny; FILLER=$ROOT/build/corpus/held/books; LENGTHS=16384; DEPTHS=0,0.25,0.5,0.75,1
TRIALS=4; DIR=$ROOT/build/passkey-generate; THREADS=0
while [ $# -gt 0 ]; do
  case $1 in
    -m) MODEL=$2; shift 2 ;;
    -f) FILLER=$2; shift 2 ;;
    --context-tokens) LENGTHS=$2; shift 2 ;;
    --depths) DEPTHS=$2; shift 2 ;;
    --trials) TRIALS=$2; shift 2 ;;
    -o) DIR=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 1 ;;
  esac
done
[ -x "$CEPE" ] || { echo "error: $CEPE not found (build first)" >&2; exit 1; }
rm -rf "$DIR" && mkdir -p "$DIR"
"$CEPE" passkey -m "$MODEL" -f "$FILLER" --context-tokens "$LENGTHS" --depths "$DEPTHS" --trials "$TRIALS" -t "$THREADS" \
  --save-cases "$DIR/cases" --json "$DIR/passkey.json" -q > "$DIR/passkey.txt"
total=$(wc -l < "$DIR/cases/cases.tsv"); i=0
: > "$DIR/generate.tsv"
while IFS=$'\t' read -r file question key length depth; do
  i=$((i + 1))
  out=$("$CEPE" generate -m "$MODEL" -c "$DIR/cases/$file" -p "$question" --greedy -n 8 -t "$THREADS" 2> "$DIR/cases/$file.err")
  # The continuation is what generate prints after the prompt; its leading digits are the answer.
  answer=$(printf '%s' "${out#"$question"}" | head -1 | sed -E 's/^ *([0-9]*).*/\1/')
  ok=0; [ "$answer" = "$key" ] && ok=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$length" "$depth" "$key" "$answer" "$ok" "$file" >> "$DIR/generate.tsv"
  # A terminal gets one line rewritten in place; a log gets plain lines.
  if [ -t 2 ]; then printf '\rpasskey-generate: %d/%d cases' "$i" "$total" >&2; else echo "passkey-generate: $i/$total cases" >&2; fi
done < "$DIR/cases/cases.tsv"
if [ -t 2 ]; then echo >&2; fi
echo "cepe passkey (the same cases, in-process):"
cat "$DIR/passkey.txt"
echo "cepe generate -c CASE.txt -p \"What is the pass key? The pass key is\" (text mode):"
python3 - "$DIR/generate.tsv" <<'EOF'
import collections, sys
cells = collections.defaultdict(lambda: [0, 0])
for line in open(sys.argv[1]):
    length, depth, key, answer, ok, _ = line.rstrip('\n').split('\t')
    c = cells[(int(length), float(depth))]; c[0] += int(ok); c[1] += 1
lengths = sorted({k[0] for k in cells}); depths = sorted({k[1] for k in cells})
print('%-8s' % 'depth' + ''.join(' %9s' % ('%d tok' % n) for n in lengths))
for d in depths:
    print('%-8s' % ('%.0f%%' % (100 * d)) + ''.join(' %8.0f%%' % (100.0 * cells[(n, d)][0] / cells[(n, d)][1]) for n in lengths))
tot = [sum(cells[(n, d)][0] for d in depths) for n in lengths], [sum(cells[(n, d)][1] for d in depths) for n in lengths]
print('%-8s' % 'all' + ''.join(' %8.0f%%' % (100.0 * a / b) for a, b in zip(*tot)))
EOF
