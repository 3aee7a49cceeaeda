#!/usr/bin/env bash
# Fails if a lower layer includes a higher one (core -> kernels -> model -> runtime -> train -> tools).
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
forbid src/core 'kernels/' 'model/' 'runtime/' 'train/' 'cepe/(model|generate|tokenizer|config)\.h'
forbid src/kernels 'model/' 'runtime/' 'train/' 'cepe/(model|generate|tokenizer)\.h'
forbid src/model 'runtime/' 'train/' 'cepe/(generate|tokenizer)\.h'
forbid src/runtime 'train/'
forbid include/cepe 'core/' 'kernels/' 'model/' 'runtime/' 'train/'
exit $status
