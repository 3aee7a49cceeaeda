#!/usr/bin/env bash
# Data-parallel training equals one process (ctest: mpi.train_equals_one_process): `mpirun -np 2 cepe train`
# with batch B per rank must give the per-step losses of one process with batch 2B, within 1e-5 relative.
#   bash tests/mpi_train_test.sh CEPE_BINARY MPIEXEC TOKENIZER TEXT_FILE...
set -euo pipefail
cepe=$1 mpiexec=$2 tokenizer=$3
shift 3
# Under the sanitizer suite: Open MPI's plugins leak at MPI_Finalize (ompi_op_base_op_select and friends, not our
# code); our code's leaks are checked by the in-process tests.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}detect_leaks=0"
export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_btl_base_warn_component_unused=0 OMP_NUM_THREADS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$cepe" data tokenize -m "$tokenizer" -o "$work/train.tokens" "$@" 2>/dev/null
config() {  # config OUTPUT_DIR BATCH
  cat <<JSON
{"stage": "decoder", "output_dir": "$1",
 "model": {"config": {"architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "max_position_embeddings": 128, "rms_norm_eps": 1e-5}, "seed": 1},
 "data": {"train": [{"files": ["$work/train.tokens"]}], "eval": [{"files": ["$work/train.tokens"]}], "seq_len": 32},
 "batch_size": $2, "grad_accum": 2, "steps": 8, "seed": 5, "optimizer": {"lr": 3e-3},
 "eval": {"every": 4, "batches": 2}}
JSON
}
config "$work/one" 8 > "$work/one.json"
config "$work/two" 4 > "$work/two.json"
timeout -k 5 120 "$cepe" train --config "$work/one.json" -q -t 1
timeout -k 5 120 "$mpiexec" -np 2 --allow-run-as-root --oversubscribe "$cepe" train --config "$work/two.json" -q -t 1
losses() { grep -o '"\(loss\|eval_loss\)":[-0-9.e+]*' "$1/log.jsonl" | cut -d: -f2; }
paste <(losses "$work/one") <(losses "$work/two") | awk '
  { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > worst) worst = r
    printf "one process %s  two ranks %s  rel %.2e\n", $1, $2, r }
  END { if (n != 11) { print "mpi_train_test: expected 11 losses (8 steps, 3 evals), got " n; exit 1 }
        if (worst > 1e-5) { print "mpi_train_test: FAILED: worst relative difference " worst; exit 1 }
        print "mpi_train_test: 2 ranks x batch 4 = 1 process x batch 8, worst relative difference " worst }'
# Every step of the 2-rank run logs its all-reduce time; the single process (nothing to reduce) logs none.
reduced=$(grep -c '"allreduce_s":' "$work/two/log.jsonl" || true)
[ "$reduced" = 8 ] || { echo "mpi_train_test: FAILED: $reduced of 8 steps of the 2-rank run log allreduce_s"; exit 1; }
! grep -q '"allreduce_s":' "$work/one/log.jsonl" || { echo "mpi_train_test: FAILED: the 1-process run logs allreduce_s"; exit 1; }
echo "mpi_train_test: allreduce_s logged on each of the 8 steps of the 2-rank run"
