#!/bin/sh
# The training-step benchmark against PyTorch (docs/training.md, "Speed"): for each round, the decoder step
# and the CEPE-stage step in cepe.cpp and in PyTorch (the original reference code, bench/torch_train_step.py)
# one after the other with the same thread count, so that the machine's noise hits both; then the same steps
# with recomputation (cepe.cpp) for the memory figures. Every run is its own process, so that each peak RSS
# is its own. The summary (median and spread over rounds, ratios) goes to docs/bench/train-vs-torch.{md,json,png}.
#
# usage: bench/train_vs_torch.sh [-t THREADS] [-r ROUNDS] [-s STEPS] [-o OUTDIR] [-b BUILD]
set -eu
threads=2 rounds=3 steps=4 warmup=2 out=docs/bench build=build
while getopts t:r:s:o:b:w: opt; do
  case $opt in
    t) threads=$OPTARG ;; r) rounds=$OPTARG ;; s) steps=$OPTARG ;; w) warmup=$OPTARG ;;
    o) out=$OPTARG ;; b) build=$OPTARG ;; *) exit 2 ;;
  esac
done
cepe=$build/bin/cepe
here=$(dirname "$0")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
export OMP_NUM_THREADS="$threads"  # both sides: one OpenMP runtime (libgomp), one OpenBLAS (openmp build)

i=0
run() {  # impl model round [--recompute]
  i=$((i + 1))
  f=$tmp/run-$i.json
  if [ "$1" = cepe.cpp ]; then
    "$cepe" bench train --config "$here/train/$2.json" -t "$threads" --warmup "$warmup" --steps "$steps" \
      ${4:-} --json "$f" >/dev/null
  else
    /usr/bin/python3 "$here/torch_train_step.py" --config "$here/train/$2.json" --threads "$threads" \
      --warmup "$warmup" --steps "$steps" >"$f"
  fi
  /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["round"]=int(sys.argv[2]); d["model"]=sys.argv[3]; json.dump(d,open(sys.argv[1],"w"))' "$f" "$3" "$2"
  echo "round $3: $1 $2 ${4:-}: $(/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=sorted(d["step_seconds"]); print("%.3f s/step" % s[len(s)//2])' "$f")" >&2
}

echo "load before: $(cat /proc/loadavg)" >&2
for r in $(seq 1 "$rounds"); do
  for m in decoder cepe; do
    if [ $((r % 2)) = 1 ]; then run cepe.cpp $m $r; run pytorch $m $r
    else run pytorch $m $r; run cepe.cpp $m $r; fi
  done
done
for m in decoder cepe; do run cepe.cpp $m 0 --recompute; done
echo "load after: $(cat /proc/loadavg)" >&2
/usr/bin/python3 -c 'import json,sys; json.dump([json.load(open(f)) for f in sys.argv[2:]], open(sys.argv[1], "w"), indent=1)' \
  "$tmp/all.json" $(ls "$tmp"/run-*.json | sort -V)
"$cepe" bench train --report "$tmp/all.json" --json "$out/train-vs-torch.json" --md "$out/train-vs-torch.md" \
  --plot "$out/train-vs-torch.png"
cat "$out/train-vs-torch.md"
