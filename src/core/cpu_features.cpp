#include "core/cpu_features.h"

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace cepe {

namespace {

#if defined(__x86_64__) || defined(__i386__)
struct Regs {
  uint32_t a = 0, b = 0, c = 0, d = 0;
};

// All zero when the leaf is above the CPU's maximum (so absent features read as false).
Regs cpuid(uint32_t leaf, uint32_t subleaf) {
  Regs r;
  if (!__get_cpuid_count(leaf, subleaf, &r.a, &r.b, &r.c, &r.d)) r = Regs{};
  return r;
}

bool bit(uint32_t reg, int n) { return (reg >> n) & 1u; }

// XCR0: which register states the OS enabled. Inline asm rather than _xgetbv(), which needs -mxsave.
uint64_t xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  const Regs l1 = cpuid(1, 0);
  f.sse42 = bit(l1.c, 20);
  // XGETBV itself faults unless the OS set CR4.OSXSAVE (CPUID.1:ECX bit 27).
  const uint64_t x = bit(l1.c, 27) ? xcr0() : 0;
  const bool os_ymm = (x & 0x6) == 0x6;     // XMM (bit 1) and YMM (bit 2)
  const bool os_zmm = (x & 0xe6) == 0xe6;   // and opmask, ZMM_Hi256, Hi16_ZMM (bits 5-7)
  const Regs l7 = cpuid(7, 0);
  const Regs l7s1 = l7.a >= 1 ? cpuid(7, 1) : Regs{};  // l7.a: the highest subleaf of leaf 7

  f.avx = os_ymm && bit(l1.c, 28);
  f.fma = f.avx && bit(l1.c, 12);
  f.f16c = f.avx && bit(l1.c, 29);
  f.avx2 = f.avx && bit(l7.b, 5);
  f.bmi2 = bit(l7.b, 8);
  f.avx_vnni = f.avx && bit(l7s1.a, 4);

  f.avx512f = os_ymm && os_zmm && bit(l7.b, 16);
  f.avx512dq = f.avx512f && bit(l7.b, 17);
  f.avx512cd = f.avx512f && bit(l7.b, 28);
  f.avx512bw = f.avx512f && bit(l7.b, 30);
  f.avx512vl = f.avx512f && bit(l7.b, 31);
  f.avx512_vnni = f.avx512f && bit(l7.c, 11);
  f.avx512_bf16 = f.avx512f && bit(l7s1.a, 5);
  f.avx512_fp16 = f.avx512f && bit(l7.d, 23);
  return f;
}
#else
CpuFeatures detect() { return {}; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace cepe
