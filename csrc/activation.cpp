// tanh over a contiguous float32/float64 buffer, vectorised.
//
// Why: the CPU tanh of the torch builds we use (2.13, x86-64) runs at about 12 ns per float,
// 10x its sigmoid, and the 64-wide tanh MLPs of the RL agents spend a fifth of a population's
// training time in it (docs/population.md). glibc's libmvec has vector tanh for SSE, AVX2 and
// AVX-512 (max error 4 ulp, documented; measured 1-2 ulp against float64 in tests/test_activation.py).
//
// Every element goes through the same vector function, the tail included (a zero-padded block),
// so an element's result never depends on its position in the buffer: a population member's
// activations are the same alone or beside others (tests/test_population.py relies on this).
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstring>

#include "common.h"

#if defined(LF_X86_DISPATCH) && defined(LF_HAVE_LIBMVEC)
#include <immintrin.h>
// glibc's vector ABI names (x86_64 vector function ABI): b = SSE, d = AVX2, e = AVX-512.
extern "C" {
__m128 _ZGVbN4v_tanhf(__m128);
__m128d _ZGVbN2v_tanh(__m128d);
__m256 _ZGVdN8v_tanhf(__m256);
__m256d _ZGVdN4v_tanh(__m256d);
__m512 _ZGVeN16v_tanhf(__m512);
__m512d _ZGVeN8v_tanh(__m512d);
}
#define LF_VECTOR_TANH 1
#endif

namespace py = pybind11;

namespace lf {
namespace {

#ifdef LF_VECTOR_TANH
// One block of W lanes: load, tanh, store. The tail block is copied into a zeroed W-wide buffer,
// so it runs through the same vector call as every other block.
#define LF_TANH_STAMP(NAME, TARGET, T, VEC, W, LOAD, STORE, FN)                 \
  TARGET void NAME(const T* x, T* y, std::int64_t n) {                           \
    std::int64_t i = 0;                                                           \
    for (; i + (W) <= n; i += (W)) STORE(y + i, FN(LOAD(x + i)));                 \
    if (i < n) {                                                                  \
      alignas(64) T buf[W] = {};                                                  \
      std::memcpy(buf, x + i, sizeof(T) * (n - i));                               \
      STORE(buf, FN(LOAD(buf)));                                                  \
      std::memcpy(y + i, buf, sizeof(T) * (n - i));                               \
    }                                                                             \
  }

LF_TANH_STAMP(tanh_f32_sse, , float, __m128, 4, _mm_loadu_ps, _mm_storeu_ps, _ZGVbN4v_tanhf)
LF_TANH_STAMP(tanh_f64_sse, , double, __m128d, 2, _mm_loadu_pd, _mm_storeu_pd, _ZGVbN2v_tanh)
LF_TANH_STAMP(tanh_f32_avx2, LF_TARGET_AVX2, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _ZGVdN8v_tanhf)
LF_TANH_STAMP(tanh_f64_avx2, LF_TARGET_AVX2, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _ZGVdN4v_tanh)
LF_TANH_STAMP(tanh_f32_avx512, LF_TARGET_AVX512, float, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps,
              _ZGVeN16v_tanhf)
LF_TANH_STAMP(tanh_f64_avx512, LF_TARGET_AVX512, double, __m512d, 8, _mm512_loadu_pd, _mm512_storeu_pd,
              _ZGVeN8v_tanh)
#undef LF_TANH_STAMP

template <typename T>
void tanh_buffer(const T* x, T* y, std::int64_t n) {
  if constexpr (sizeof(T) == 4) {
    pick_isa(&tanh_f32_sse, &tanh_f32_avx2, &tanh_f32_avx512)(x, y, n);
  } else {
    pick_isa(&tanh_f64_sse, &tanh_f64_avx2, &tanh_f64_avx512)(x, y, n);
  }
}

const char* tanh_impl() { return "libmvec"; }
#else
// No libmvec (not glibc, or not x86-64): the C library's scalar tanh, which is as accurate and
// equally position independent, only not faster than torch's.
template <typename T>
void tanh_buffer(const T* x, T* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

const char* tanh_impl() { return "scalar"; }
#endif

}  // namespace

void register_activation(py::module_& m) {
  m.def(
      "tanh",
      [](std::uintptr_t x, std::uintptr_t y, std::int64_t n, int dtype) {
        if (n < 0) throw std::invalid_argument("tanh: n must be >= 0, got " + std::to_string(n));
        if (n == 0) return;
        if (x == 0 || y == 0) throw std::invalid_argument("tanh: null buffer");
        py::gil_scoped_release release;
        dispatch_float(dtype, [&](auto zero) {
          using T = decltype(zero);
          tanh_buffer<T>(as_ptr<const T>(x), as_ptr<T>(y), n);
        });
      },
      py::arg("x"), py::arg("y"), py::arg("n"), py::arg("dtype"),
      "y[i] = tanh(x[i]) for n contiguous float32 (dtype 0) or float64 (dtype 1) values; y may be x.");
  m.attr("tanh_impl") = tanh_impl();
}

}  // namespace lf
