#!/usr/bin/env bash
# scripts/training_summary.py --compare, the reproduction check: it pools the held-out perplexity over the
# sources at each (protocol, context) and fails above 2%, whatever one source's row says; rows that score
# different tokens fail. Usage: training_summary_test.sh SCRIPT
set -euo pipefail
script=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# rows SCALE_SCIENCE SCALE_CODE: two sources x two contexts, scaled perplexities (science 1000 tokens, code 3000).
rows() {
  python3 - "$1" "$2" "${3:-1000}" <<'PY'
import json, sys
s_sci, s_code, n_sci = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rows = []
for ctx, base in ((0, 80.0), (8192, 50.0)):
    rows.append(dict(source='science', protocol='cepe', context_tokens=ctx, scored_tokens=n_sci, ppl=base * s_sci))
    rows.append(dict(source='code', protocol='cepe', context_tokens=ctx, scored_tokens=3000, ppl=0.5 * base * s_code))
print(json.dumps(rows))
PY
}
rows 1 1 > "$dir/shipped.json"

expect() {  # expect STATUS WHAT NEW.json
  local got=0
  python3 "$script" --compare "$dir/shipped.json" "$3" > "$dir/out.txt" || got=$?
  if [[ $got != "$1" ]]; then
    echo "FAIL: $2: exit status $got, expected $1"; cat "$dir/out.txt"; exit 1
  fi
}

# science +5%, code -1%: pooled (1000 x ln 1.05 + 3000 x ln 0.99) / 4000 = +0.47%: passes.
rows 1.05 0.99 > "$dir/a.json"
expect 0 "one domain off by 5%, pooled +0.47%" "$dir/a.json"
grep -q "largest difference of the pooled held-out perplexity: 0.47%" "$dir/out.txt" || { echo "FAIL: pooled figure"; cat "$dir/out.txt"; exit 1; }
grep -q "+5.00%" "$dir/out.txt" || { echo "FAIL: the per-source row is not printed"; exit 1; }

# both +2.5%: fails.
rows 1.025 1.025 > "$dir/b.json"
expect 1 "both domains +2.5%" "$dir/b.json"

# the same perplexities on other windows: fails.
rows 1 1 2000 > "$dir/c.json"
expect 1 "different scored tokens" "$dir/c.json"
grep -q "not the same windows" "$dir/out.txt" || { echo "FAIL: no reason given"; exit 1; }

# a missing row fails.
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps(r[1:]))" "$dir/shipped.json" > "$dir/d.json"
expect 1 "a missing row" "$dir/d.json"

# identical: passes at 0.00%.
expect 0 "identical" "$dir/shipped.json"
echo "ok"
