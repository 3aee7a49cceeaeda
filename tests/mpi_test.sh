#!/usr/bin/env bash
# Runs tests/mpi_check.cpp under mpirun on loopback (ctest: mpi.*). Works as root in a container without
# network: TCP over lo only (shared memory is left out: its single-copy mode needs ptrace rights that containers
# often lack), oversubscribed on 2 cores.
#   bash tests/mpi_test.sh CHECK_BINARY MPIEXEC {all NP | fail | hang}
set -uo pipefail
check_bin=$1 mpiexec=$2 mode=$3 np=${4:-2}
# Under the sanitizer suite: Open MPI's plugins leak at MPI_Finalize (ompi_op_base_op_select and friends, not our
# code); our code's leaks are checked by the in-process tests.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}detect_leaks=0"
export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_btl_base_warn_component_unused=0 OMP_NUM_THREADS=1
run() {  # run SECONDS NP ARGS...: mpirun under a hard time limit; output in $out, status in $rc, seconds in $took
  local limit=$1 n=$2; shift 2
  local start=$SECONDS
  out=$(timeout -k 5 "$limit" "$mpiexec" -np "$n" --allow-run-as-root --oversubscribe "$check_bin" "$@" 2>&1)
  rc=$? took=$((SECONDS - start))
  printf '%s\n' "$out"
}
fail() { echo "mpi_test: FAILED: $*" >&2; exit 1; }

case $mode in
  all)
    run 120 "$np" all "$np"
    [[ $rc -eq 0 ]] || fail "mpi_check all on $np ranks exited with $rc"
    grep -q "all checks passed" <<<"$out" || fail "no pass line"
    grep -q "identical on every rank: yes" <<<"$out" || fail "ranks differ"
    ;;
  fail)
    # The last rank throws while the others wait in an allreduce: everything must end, with its message and a
    # non-zero status, long before the 600 s collective timeout.
    run 60 2 fail
    [[ $rc -ne 0 && $rc -ne 124 && $rc -ne 137 ]] || fail "expected a prompt non-zero exit, got $rc after ${took}s"
    grep -q "error: rank 1: simulated failure while loading data" <<<"$out" || fail "the failed rank's message is missing"
    grep -q "completed without the failed rank" <<<"$out" && fail "a collective completed without a rank"
    ((took < 30)) || fail "took ${took}s to end"
    ;;
  hang)
    # The last rank sleeps 30 s: with a 2 s timeout the waiting rank gives up with a clear message and mpirun ends
    # the sleeper.
    export CEPE_COMM_TIMEOUT_S=2
    run 60 2 hang
    [[ $rc -ne 0 && $rc -ne 124 && $rc -ne 137 ]] || fail "expected a prompt non-zero exit, got $rc after ${took}s"
    grep -q "error: mpi: barrier on rank 0 of 2 not complete after 2 s (CEPE_COMM_TIMEOUT_S): another rank has failed or is stuck" <<<"$out" \
      || fail "the timeout message is missing"
    grep -q "barrier passed" <<<"$out" && fail "a barrier passed without a rank"
    ((took < 25)) || fail "took ${took}s to end"
    ;;
  *) fail "unknown mode $mode" ;;
esac
echo "mpi_test: $mode passed in ${took}s"
