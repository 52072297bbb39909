// Shared helpers for the CPU core: dtype codes, raw-pointer casts, threading, dispatch.
// Nothing here knows about Python or torch: callers pass integers that are data pointers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef LF_HAVE_OPENMP
#include <omp.h>
#endif

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

// Runtime ISA dispatch: the library is compiled for the portable baseline, and functions marked
// LF_MULTIVERSION get x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) clones that glibc's ifunc resolver
// picks at load time ("avx2" alone would leave out FMA).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LF_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LF_MULTIVERSION
#endif
