#!/usr/bin/env bash
# Fuzzes the file readers with libFuzzer (clang-14, ASan + UBSan; the targets are in tests/fuzz/).
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     # default 60 s each; all targets; 2 at a time
# Builds into build-fuzz/ (-DCEPE_FUZZ=ON), runs each target for SECONDS on a working corpus seeded from
# tests/fuzz/corpus/<target> (build-fuzz/corpus/<target>, kept between runs so coverage accumulates), and
# prints a table. Inputs that crash, leak, time out or run out of memory land in build-fuzz/artifacts/<target>/;
# the run goes on after a finding (-fork=1 -ignore_*), so the counts are what SECONDS found, duplicates included.
# Each target's log: build-fuzz/logs/<target>.log; each new artifact is replayed once for its report
# (build-fuzz/logs/<target>.<artifact>.txt) and summarised at the end. Exit status 1 if anything was found.
# Keep an input that must stay fixed in tests/fuzz/regressions/<target>/: ctest replays it (fuzz_replay_<target>).
#   CEPE_FUZZ_JOBS=N   targets run at once (default 2: the machine has 2 cores)
#   CEPE_FUZZ_CXX=...  the compiler (default clang++-14)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
all=(safetensors config request context tokenizer token_file train_config teacher facts)
if (($#)); then targets=("$@"); else targets=("${all[@]}"); fi
jobs=${CEPE_FUZZ_JOBS:-2}
build=build-fuzz
[[ "$secs" =~ ^[0-9]+$ && "$secs" -gt 0 ]] || { echo "fuzz.sh: SECONDS must be a positive integer, got '$secs'" >&2; exit 2; }
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (targets: ${all[*]})" >&2; exit 2; }
done

cxx=${CEPE_FUZZ_CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found (apt-get install clang-14 libomp-14-dev)" >&2; exit 2; }
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$cxx" -DCEPE_FUZZ=ON \
  -DCEPE_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "${CEPE_JOBS:-2}" --target $(printf 'fuzz_%s ' "${targets[@]}")

max_len() {
  case $1 in
    safetensors|context|tokenizer|token_file|teacher) echo 1048576 ;;
    *) echo 65536 ;;
  esac
}

# The sanitizers' reports end the input (libFuzzer saves it); leaks are checked after every input.
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0:print_stacktrace=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1  # one core per target; the targets run side by side

stamp="$build/.fuzz-start"
mkdir -p "$build/logs"
touch "$stamp"

run_target() {
  local t=$1 corpus="$build/corpus/$1" art="$build/artifacts/$1" log="$build/logs/$1.log"
  mkdir -p "$corpus" "$art"
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  local dict=()
  [[ $t != tokenizer ]] && dict=(-dict=tests/fuzz/json.dict)
  local start=$SECONDS
  # -fork=1: one child at a time, restarted after a crash, so the whole time is spent fuzzing.
  "$build/fuzz/fuzz_$t" "$corpus" "${dict[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$(max_len "$t")" -artifact_prefix="$art/" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 \
    -ignore_ooms=1 -print_final_stats=1 -print_funcs=0 >"$log" 2>&1 || true
  echo $((SECONDS - start)) >"$log.seconds"
}

running=0
for t in "${targets[@]}"; do
  if ((running >= jobs)); then wait -n || true; running=$((running - 1)); fi
  echo "fuzz.sh: $t for ${secs}s (log: $build/logs/$t.log)"
  run_target "$t" &
  running=$((running + 1))
done
wait

found_any=0
report=""
printf '\n%-12s %8s %12s %9s %14s %7s %6s %8s %5s\n' target seconds execs execs/s corpus crash leak timeout oom
for t in "${targets[@]}"; do
  log="$build/logs/$t.log" art="$build/artifacts/$t"
  # Fork mode's status lines: "#N: cov: .. corp: .. exec/s: E oom/timeout/crash: ..."; plain mode's final stats.
  line=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
  execs=$(sed -nE 's/^#([0-9]+):.*/\1/p' <<<"$line")
  [[ -n $execs ]] || execs=$(sed -nE 's/^stat::number_of_executed_units: ([0-9]+)/\1/p' "$log" | tail -1)
  execs=${execs:-0}
  s=$(cat "$log.seconds" 2>/dev/null || echo 0)
  rate=$((s > 0 ? execs / s : 0))
  files=$(find "$build/corpus/$t" -type f | wc -l)
  kb=$(find "$build/corpus/$t" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s / 1024}')
  count() { find "$art" -maxdepth 1 -type f -name "$1-*" -newer "$stamp" | wc -l; }
  c=$(count crash) l=$(count leak) to=$(count timeout) o=$(count oom)
  printf '%-12s %8s %12s %9s %14s %7s %6s %8s %5s\n' "$t" "$s" "$execs" "$rate" "$files files/${kb}K" "$c" "$l" "$to" "$o"
  if ! grep -qE '^(INFO: exiting|Done [0-9]+ runs|INFO: fuzzed for)' "$log"; then
    report+="$t: did not finish normally, see $log"$'\n'
    found_any=1
  fi
  if ((c + l + to + o > 0)); then
    found_any=1
    # Replay the new artifacts (up to 20) one at a time and group them by their sanitizer SUMMARY line, which
    # names the kind and the top frame: fork mode saves every crashing input, mostly the same bug again.
    declare -A seen=()
    n=0
    while IFS= read -r a; do
      ((n++ < 20)) || break
      out="$build/logs/$t.$(basename "$a").txt"
      timeout 60 "$build/fuzz/fuzz_$t" -timeout=10 -rss_limit_mb=2048 -runs=1 "$a" >"$out" 2>&1 || true
      # The harness's own message or a libstdc++ assertion (both end in abort: "deadly signal"), then the summary.
      sig=$( (grep -m1 -E "^fuzz: |Assertion '.*' failed" "$out" || true; grep -m1 '^SUMMARY: ' "$out" || true) |
        sed -E 's/^.*(Assertion .* failed)/\1/' | tr '\n' ' ')
      sig=${sig:-no report on replay (flaky, or over 60 s)}
      if [[ -z ${seen[$sig]:-} ]]; then
        seen[$sig]=1
        top=$(grep -E '^ +#[0-9]+ ' "$out" | grep -vE 'libFuzzer|fuzzer::|compiler-rt|sanitizer|asan_|ubsan_|libc\.so|libc_start|in main |in _start|pthread_kill|in raise|in abort|__glibcxx_assert|nptl/|stdlib/' | head -4 | sed -E 's/^ +//; s/ \(BuildId: [0-9a-f]+\)//' || true)
        report+="$t: $sig"$'\n'"      first: $a ($(stat -c %s "$a") bytes; report: $out)"$'\n'
        [[ -n $top ]] && report+="$(sed 's/^/      /' <<<"$top")"$'\n'
      else
        seen[$sig]=$((${seen[$sig]} + 1))  # not seen[$sig] inside (( )): $sig holds spaces and brackets
      fi
    done < <(find "$art" -maxdepth 1 -type f -newer "$stamp" | sort)
    for sig in "${!seen[@]}"; do
      [[ ${seen[$sig]} -gt 1 ]] && report+="$t: ${seen[$sig]} of the replayed artifacts: $sig"$'\n'
    done
    unset seen
  fi
done
# A target that crashed left its input file behind (fuzz_common.h: cepe-fuzz-<target>-<pid>).
for f in /dev/shm/cepe-fuzz-* "${TMPDIR:-/tmp}"/cepe-fuzz-*; do
  [[ -f $f ]] && ! kill -0 "${f##*-}" 2>/dev/null && rm -f "$f"
done
if [[ -n $report ]]; then
  printf '\nFindings (reports in %s/logs/):\n%s' "$build" "$report"
fi
exit $found_any
