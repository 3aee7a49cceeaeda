#pragma once
// What this CPU *and* its OS let us run, probed once with CPUID and XGETBV. A vector extension counts only
// when the OS saves its registers on a context switch (XCR0), which CPUID alone does not say: a VM or a
// kernel booted with AVX-512 state disabled reports the CPUID bits but would fault on the instructions.
// Replaces __builtin_cpu_supports, whose feature names differ between g++ and clang (clang 14 lacks "f16c").
namespace cepe {

struct CpuFeatures {
  bool sse42 = false;
  bool avx = false;  // the OS saves YMM state; every VEX-encoded feature below also requires it
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool bmi2 = false;
  bool avx_vnni = false;
  bool avx512f = false;  // the OS saves opmask and ZMM state; every AVX-512 feature below also requires it
  bool avx512dq = false;
  bool avx512cd = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool avx512_fp16 = false;
};

// Detected on first use (thread-safe); all false on non-x86 machines.
const CpuFeatures& cpu_features();

}  // namespace cepe
