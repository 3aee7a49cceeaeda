#!/usr/bin/env bash
# Fails if a lower layer includes a higher one (core -> kernels -> model -> runtime -> train, eval -> tools;
# train and eval are siblings and include neither the other).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
forbid() {  # forbid DIR PATTERN...
  local dir=$1; shift
  for pat in "$@"; do
    if grep -rnE "#include \"($pat)" "$dir" 2>/dev/null; then
      echo "layering: $dir must not include $pat" >&2
      status=1
    fi
  done
}
forbid src/core 'kernels/' 'model/' 'runtime/' 'train/' 'eval/' 'cepe/(model|generate|tokenizer|config)\.h'
forbid src/kernels 'model/' 'runtime/' 'train/' 'eval/' 'cepe/(model|generate|tokenizer)\.h'
forbid src/model 'runtime/' 'train/' 'eval/' 'cepe/(generate|tokenizer)\.h'
forbid src/runtime 'train/' 'eval/'
forbid src/train 'eval/'
forbid src/eval 'train/'
forbid include/cepe 'core/' 'kernels/' 'model/' 'runtime/' 'train/' 'eval/'
exit $status
