// OpenMP state the kernels leave behind. A kernel call that runs on one thread must not shrink the thread team
// of the next parallel region: OpenBLAS (OpenMP build) splits its work for the threads it asked for and waits
// forever when the runtime gives it fewer (this hung every model test in the clang build).
#include <gtest/gtest.h>
#include <omp.h>

#include <vector>

#include "cepe/tensor.h"
#include "kernels/cpu/shared_kv_attention.h"

namespace cepe {
namespace {

int next_team_size() {
  int n = 0;
#pragma omp parallel
  {
#pragma omp single
    n = omp_get_num_threads();
  }
  return n;
}

TEST(KernelThreads, OneThreadSharedKvAttentionLeavesTheNextTeamWhole) {
  const int max = omp_get_max_threads();
  if (max < 2) GTEST_SKIP() << "needs OMP_NUM_THREADS >= 2";
  const int64_t M = 2, D = 8, N = 16;  // few keys: the kernel runs on the calling thread
  std::vector<float> q(M * D, 0.5f), s(N * D, 0.25f), out(M * D);
  kernels::shared_kv_attention(q.data(), M, D, s.data(), DType::F32, N, nullptr, out.data());
  EXPECT_EQ(next_team_size(), max);
}

}  // namespace
}  // namespace cepe
