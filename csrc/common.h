// Shared helpers for the CPU core: dtype codes, raw-pointer casts, threading, dispatch.
// Nothing here knows about Python or torch: callers pass integers that are data pointers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef LF_HAVE_OPENMP
#include <omp.h>
#endif

// Forces inlining into the per-ISA stamps below, so that the stamp's target attribute applies.
#define LF_INLINE inline __attribute__((always_inline))

namespace lf {

// Element type of a buffer, as the Python side names it (lottery_fast/_buffers.py).
enum class DType : int { Float32 = 0, Float64 = 1 };

template <typename T>
inline T* as_ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

inline int max_threads() {
#ifdef LF_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef LF_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Calls f.template operator()<T>() with T = float or double.
template <typename F>
inline void dispatch_float(int dtype, F&& f) {
  switch (static_cast<DType>(dtype)) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    default: throw std::invalid_argument("lottery_fast core: unsupported dtype code " + std::to_string(dtype));
  }
}

}  // namespace lf

// Runtime ISA dispatch, one scheme for every kernel family: the library is compiled for the
// portable baseline, each hot function is stamped once per ISA with the target attributes below,
// and the drivers pick one set of function pointers per call from detect_isa(). Unlike GCC's
// target_clones (an ifunc resolved at load time, GCC only) the choice can be lowered at run
// time, so the tests run the AVX2 and baseline code on an AVX-512 machine, and clang builds get
// the same three versions.
#if defined(__x86_64__) && defined(__GNUC__)
#define LF_X86_DISPATCH 1
#define LF_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2")))
#define LF_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2")))
#else
// Elsewhere the three stamps are the same baseline code (detect_isa() never picks the others).
#define LF_TARGET_AVX512
#define LF_TARGET_AVX2
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace lf {

enum class Isa { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The widest ISA this CPU runs, lowered by the environment variable LOTTERY_FAST_ISA
// ("baseline" or "avx2"; read once, at the first kernel call) so that tests and benchmarks can
// exercise the narrower kernels on a wider machine. It never raises the level above the CPU's.
inline Isa detect_isa() {
  static const Isa isa = [] {
    Isa best = Isa::Baseline;
#ifdef LF_X86_DISPATCH
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      best = Isa::Avx512;
    } else if (avx2) {
      best = Isa::Avx2;
    }
#endif
    const char* cap = std::getenv("LOTTERY_FAST_ISA");
    if (cap && std::strcmp(cap, "baseline") == 0) return Isa::Baseline;
    if (cap && std::strcmp(cap, "avx2") == 0) return std::min(best, Isa::Avx2);
    return best;
  }();
  return isa;
}

inline const char* isa_name() {
  switch (detect_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "baseline";
  }
}

// One of three values by the dispatched ISA (function pointers of the per-ISA stamps).
template <typename F>
inline F pick_isa(F base, F avx2, F avx512) {
  switch (detect_isa()) {
    case Isa::Avx512: return avx512;
    case Isa::Avx2: return avx2;
    default: return base;
  }
}

}  // namespace lf
