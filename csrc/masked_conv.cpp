// Masked (sparse-filter) conv2d on the CPU: forward, grad_input, grad_weight, grad_bias.
//
// The filter is read through the mask's compressed index (CSR over output channels, CSC over the
// flattened (c, kh, kw) columns, see lottery_fast/nn/sparse_index.py): weight[o * k + col] with
// k = C*KH*KW and col = (c*KH + kh)*KW + kw. Pruned weights are never read, so work scales with
// the number of kept weights. groups == 1 only; NCHW input, any stride/dilation, top/left padding
// given explicitly and bottom/right padding implied by the output size (covers asymmetric "same").
//
// Two algorithms, both direct (no im2col):
//  * blocked (batch >= kBlockedMinBatch): the batch is the SIMD axis. The input is copied once
//    into a zero-padded layout [batch block][C][Hp][Wp][B] with B = 64 bytes of lanes, so every
//    kept weight is one constant offset and every output pixel of a block is a register-held
//    sum over the kept weights of its channel (a broadcast FMA and one contiguous load each).
//    No bounds checks in the hot loops; padded lanes and borders are zeros.
//  * direct (small batches): per (image, output channel) each kept weight adds
//    w * (shifted input plane) into the output plane, the inner loop over output width
//    (contiguous when the stride is 1). No copies; wins when a batch block would be mostly empty.
// Each output element is written by exactly one task in a fixed summation order, so results do
// not depend on the thread count.
//
// Hot per-task functions carry LF_MULTIVERSION; the OpenMP loops stay in plain drivers because
// GCC outlines parallel regions before it clones functions, so a parallel region inside a
// cloned function would run baseline code.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

namespace py = pybind11;

#if defined(LF_HAVE_OPENMP)
#define LF_PRAGMA(x) _Pragma(#x)
#define LF_OMP_SIMD LF_PRAGMA(omp simd)
#define LF_OMP_SIMD_SUM(var) LF_PRAGMA(omp simd reduction(+ : var))
#else
#define LF_OMP_SIMD
#define LF_OMP_SIMD_SUM(var)
#endif

namespace lf {
namespace conv_detail {

// Which algorithm a call runs; kAuto picks by batch size.
enum Algo : int { kAuto = 0, kDirect = 1, kBlocked = 2 };

// Below this batch a 64-byte batch block would be more than half empty.
constexpr int64_t kBlockedMinBatch = 8;

struct ConvGeometry {
  int64_t n, c, h, w;        // input  [n, c, h, w]
  int64_t o, kh, kw;         // weight [o, c, kh, kw]
  int64_t oh, ow;            // output [n, o, oh, ow]
  int64_t sh, sw;            // stride
  int64_t pt, pl;            // top / left zero padding (bottom / right follow from oh, ow)
  int64_t dh, dw;            // dilation

  int64_t k() const { return c * kh * kw; }
  int64_t ohw() const { return oh * ow; }
  // Padded extent of the input that the outputs read (rows past it are never touched).
  int64_t hp() const { return (oh - 1) * sh + (kh - 1) * dh + 1; }
  int64_t wp() const { return (ow - 1) * sw + (kw - 1) * dw + 1; }

  void validate() const {
    auto need = [](bool ok, const char* what) {
      if (!ok) throw std::invalid_argument(std::string("masked_conv2d geometry: ") + what);
    };
    need(n >= 0, "batch must be >= 0");
    need(c > 0 && h > 0 && w > 0, "input channels, height and width must be > 0");
    need(o > 0 && kh > 0 && kw > 0, "output channels and kernel size must be > 0");
    need(oh > 0 && ow > 0, "output height and width must be > 0");
    need(sh > 0 && sw > 0, "stride must be > 0");
    need(dh > 0 && dw > 0, "dilation must be > 0");
    need(pt >= 0 && pl >= 0, "padding must be >= 0");
    need(pt < hp() && pl < wp(), "padding larger than the receptive extent");
  }
};

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Outputs i in [0, out) whose input index i*stride + offset lies in [0, in).
struct Range { int64_t lo, hi; };
inline Range valid_range(int64_t out, int64_t in, int64_t stride, int64_t offset) {
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  int64_t hi = floor_div(in - 1 - offset, stride) + 1;
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, out);
  return {lo, std::max(lo, hi)};
}

// Lanes of one batch block: one 64-byte vector (an AVX-512 register, two AVX2 ones, four SSE2).
// GCC vector types keep a pixel's lane sums in registers whatever the ISA of the clone.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> { typedef float type __attribute__((vector_size(64))); };
template <>
struct VecOf<double> { typedef double type __attribute__((vector_size(64))); };
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

#define LF_INLINE inline __attribute__((always_inline))
// The vector helpers are always inlined into their clone, so no vector ever crosses a call
// boundary and GCC's note about the AVX-512 calling convention does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
LF_INLINE Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
LF_INLINE void vstore(T* p, const Vec<T>& v) { std::memcpy(p, &v, sizeof v); }
template <typename T>
LF_INLINE Vec<T> vsplat(T s) {
  Vec<T> v = {};
  return v + s;
}

// Output pixels held in registers at once (forward, grad_input).
constexpr int kPix = 4;
// Kept weights whose grad sums are held in registers at once (grad_weight).
constexpr int kWts = 4;

// Everything a task reads or writes; the drivers fill in what their pass needs.
template <typename T>
struct Args {
  ConvGeometry g;
  const T* x = nullptr;
  const T* weight = nullptr;
  const T* bias = nullptr;
  T* out = nullptr;
  const T* grad_out = nullptr;
  T* grad_input = nullptr;
  T* grad_weight = nullptr;
  const int64_t* row_ptr = nullptr;
  const int32_t* col_idx = nullptr;
  const int64_t* col_ptr = nullptr;
  const int32_t* row_idx = nullptr;
  // Blocked algorithm: packed copies, per-kept-weight offsets and per-pixel offsets.
  const T* xt = nullptr;        // [nb][c][hp][wp][B]
  const T* gyt = nullptr;       // [nb][o][oh*ow][B]
  const T* wv = nullptr;        // kept weights in CSR order
  const int64_t* off = nullptr; // CSR order: offset of (c, kh, kw) inside one block of xt
  const T* wc = nullptr;        // kept weights in CSC order
  const int64_t* pix = nullptr; // per output pixel: offset of its window origin inside one channel
  T* scratch = nullptr;         // per thread, scratch_len elements each
  int64_t scratch_len = 0;
};

// ---------------------------------------------------------------------------------------------
// Direct algorithm (NCHW in place, small batches)
// ---------------------------------------------------------------------------------------------

// out[n, o] = bias[o] + sum over kept (c, kh, kw) of w * shifted x[n, c].
template <typename T>
LF_INLINE void direct_forward_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  const int64_t n = task / g.o, o = task % g.o;
  const int64_t khw = g.kh * g.kw, k = g.k();
  T* __restrict__ out = a.out + (n * g.o + o) * g.ohw();
  const T b0 = a.bias ? a.bias[o] : T(0);
  for (int64_t i = 0; i < g.ohw(); ++i) out[i] = b0;
  for (int64_t j = a.row_ptr[o]; j < a.row_ptr[o + 1]; ++j) {
    const int64_t col = a.col_idx[j];
    const int64_t c = col / khw, r = col % khw, ki = r / g.kw, kj = r % g.kw;
    const T wgt = a.weight[o * k + col];
    const int64_t yoff = ki * g.dh - g.pt, xoff = kj * g.dw - g.pl;
    const Range rh = valid_range(g.oh, g.h, g.sh, yoff), rw = valid_range(g.ow, g.w, g.sw, xoff);
    const T* plane = a.x + (n * g.c + c) * g.h * g.w;
    for (int64_t y = rh.lo; y < rh.hi; ++y) {
      T* __restrict__ orow = out + y * g.ow;
      const T* __restrict__ xrow = plane + (y * g.sh + yoff) * g.w + xoff;
      if (g.sw == 1) {
        LF_OMP_SIMD
        for (int64_t x = rw.lo; x < rw.hi; ++x) orow[x] += wgt * xrow[x];
      } else {
        const int64_t s = g.sw;
        for (int64_t x = rw.lo; x < rw.hi; ++x) orow[x] += wgt * xrow[x * s];
      }
    }
  }
}

// grad_input[n, c] = sum over kept (o, kh, kw) of column c of w * grad_out[n, o] shifted back.
template <typename T>
LF_INLINE void direct_grad_input_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  const int64_t n = task / g.c, c = task % g.c;
  const int64_t khw = g.kh * g.kw, k = g.k();
  T* __restrict__ gx = a.grad_input + (n * g.c + c) * g.h * g.w;
  for (int64_t i = 0; i < g.h * g.w; ++i) gx[i] = T(0);
  for (int64_t r = 0; r < khw; ++r) {
    const int64_t col = c * khw + r, ki = r / g.kw, kj = r % g.kw;
    const int64_t yoff = ki * g.dh - g.pt, xoff = kj * g.dw - g.pl;
    const Range rh = valid_range(g.oh, g.h, g.sh, yoff), rw = valid_range(g.ow, g.w, g.sw, xoff);
    for (int64_t i = a.col_ptr[col]; i < a.col_ptr[col + 1]; ++i) {
      const int64_t o = a.row_idx[i];
      const T wgt = a.weight[o * k + col];
      const T* gy = a.grad_out + (n * g.o + o) * g.ohw();
      for (int64_t y = rh.lo; y < rh.hi; ++y) {
        const T* __restrict__ grow = gy + y * g.ow;
        T* __restrict__ xrow = gx + (y * g.sh + yoff) * g.w + xoff;
        if (g.sw == 1) {
          LF_OMP_SIMD
          for (int64_t x = rw.lo; x < rw.hi; ++x) xrow[x] += wgt * grow[x];
        } else {
          const int64_t s = g.sw;
          for (int64_t x = rw.lo; x < rw.hi; ++x) xrow[x * s] += wgt * grow[x];
        }
      }
    }
  }
}

// grad_weight[o, col] = sum over n, pixels of grad_out[n, o] * shifted x[n, c], kept cols only.
template <typename T>
LF_INLINE void direct_grad_weight_impl(const Args<T>& a, int64_t o) {
  const ConvGeometry& g = a.g;
  const int64_t khw = g.kh * g.kw, k = g.k();
  for (int64_t j = a.row_ptr[o]; j < a.row_ptr[o + 1]; ++j) {
    const int64_t col = a.col_idx[j];
    const int64_t c = col / khw, r = col % khw, ki = r / g.kw, kj = r % g.kw;
    const int64_t yoff = ki * g.dh - g.pt, xoff = kj * g.dw - g.pl;
    const Range rh = valid_range(g.oh, g.h, g.sh, yoff), rw = valid_range(g.ow, g.w, g.sw, xoff);
    T sum = 0;
    for (int64_t n = 0; n < g.n; ++n) {
      const T* gy = a.grad_out + (n * g.o + o) * g.ohw();
      const T* plane = a.x + (n * g.c + c) * g.h * g.w;
      for (int64_t y = rh.lo; y < rh.hi; ++y) {
        const T* __restrict__ grow = gy + y * g.ow;
        const T* __restrict__ xrow = plane + (y * g.sh + yoff) * g.w + xoff;
        const int64_t s = g.sw;
        T part = 0;
        LF_OMP_SIMD_SUM(part)
        for (int64_t x = rw.lo; x < rw.hi; ++x) part += grow[x] * xrow[x * s];
        sum += part;
      }
    }
    a.grad_weight[o * k + col] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Blocked algorithm (batch on the SIMD axis)
// ---------------------------------------------------------------------------------------------

// xt[bb][c] <- zero-padded, lane-interleaved copy of x[bb*B : bb*B+B, c].
template <typename T>
void pack_input(const Args<T>& a, T* xt, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.c, c = task % g.c, hp = g.hp(), wp = g.wp();
  T* dst = xt + task * hp * wp * B;
  for (int64_t y = 0; y < hp; ++y) {
    T* drow = dst + y * wp * B;
    const int64_t iy = y - g.pt;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = bb * B + b;
      if (n >= g.n || iy < 0 || iy >= g.h) {
        for (int64_t x = 0; x < wp; ++x) drow[x * B + b] = T(0);
        continue;
      }
      const T* src = a.x + ((n * g.c + c) * g.h + iy) * g.w - g.pl;
      const int64_t lo = std::min(g.pl, wp), hi = std::min(g.pl + g.w, wp);
      for (int64_t x = 0; x < lo; ++x) drow[x * B + b] = T(0);
      for (int64_t x = lo; x < hi; ++x) drow[x * B + b] = src[x];
      for (int64_t x = hi; x < wp; ++x) drow[x * B + b] = T(0);
    }
  }
}

// gyt[bb][o] <- lane-interleaved copy of grad_out[bb*B : bb*B+B, o] (missing lanes zero).
template <typename T>
void pack_grad_out(const Args<T>& a, T* gyt, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.o, o = task % g.o, ohw = g.ohw();
  T* dst = gyt + task * ohw * B;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = bb * B + b;
    if (n >= g.n) {
      for (int64_t p = 0; p < ohw; ++p) dst[p * B + b] = T(0);
      continue;
    }
    const T* src = a.grad_out + (n * g.o + o) * ohw;
    for (int64_t p = 0; p < ohw; ++p) dst[p * B + b] = src[p];
  }
}

// P output pixels of one (block, channel): acc = bias + sum_j w_j * xt[pixel + off_j].
template <typename T, int P>
LF_INLINE void blocked_forward_pixels(const Args<T>& a, const T* xb, int64_t o, int64_t p0, T* tile) {
  constexpr int64_t B = kLanes<T>;
  Vec<T> acc[P];
  const T* base[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    base[p] = xb + a.pix[p0 + p];
    acc[p] = vsplat<T>(a.bias ? a.bias[o] : T(0));
  }
  const int64_t j1 = a.row_ptr[o + 1];
  for (int64_t j = a.row_ptr[o]; j < j1; ++j) {
    const T wgt = a.wv[j];
    const int64_t off = a.off[j];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[p] += wgt * vload(base[p] + off);
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) vstore(tile + (p0 + p) * B, acc[p]);
}

template <typename T>
LF_INLINE void blocked_forward_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.o, o = task % g.o, ohw = g.ohw();
  const T* xb = a.xt + bb * g.c * g.hp() * g.wp() * B;
  T* tile = a.scratch + thread_id() * a.scratch_len;
  int64_t p0 = 0;
  for (; p0 + kPix <= ohw; p0 += kPix) blocked_forward_pixels<T, kPix>(a, xb, o, p0, tile);
  for (; p0 < ohw; ++p0) blocked_forward_pixels<T, 1>(a, xb, o, p0, tile);
  // Un-interleave the tile into the NCHW output planes of this block's images.
  const int64_t nb = std::min(B, g.n - bb * B);
  for (int64_t b = 0; b < nb; ++b) {
    T* __restrict__ dst = a.out + ((bb * B + b) * g.o + o) * ohw;
    for (int64_t p = 0; p < ohw; ++p) dst[p] = tile[p * B + b];
  }
}

// P pixels of grad_out against one column (c, kh, kw): acc = sum over kept o of w * gyt[o][pixel],
// then one add into the padded grad plane per pixel.
template <typename T, int P>
LF_INLINE void blocked_grad_input_pixels(const Args<T>& a, const T* gyb, int64_t col, int64_t coff, int64_t p0,
                                         T* plane) {
  constexpr int64_t B = kLanes<T>;
  const int64_t ohw = a.g.ohw();
  Vec<T> acc[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) acc[p] = Vec<T>{};
  const int64_t i1 = a.col_ptr[col + 1];
  for (int64_t i = a.col_ptr[col]; i < i1; ++i) {
    const T wgt = a.wc[i];
    const T* src = gyb + (a.row_idx[i] * ohw + p0) * B;
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[p] += wgt * vload(src + p * B);
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    T* dst = plane + a.pix[p0 + p] + coff;
    vstore(dst, vload(dst) + acc[p]);
  }
}

template <typename T>
LF_INLINE void blocked_grad_input_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.c, c = task % g.c, ohw = g.ohw(), hp = g.hp(), wp = g.wp();
  const int64_t khw = g.kh * g.kw;
  const T* gyb = a.gyt + bb * g.o * ohw * B;
  T* plane = a.scratch + thread_id() * a.scratch_len;  // [hp][wp][B]
  for (int64_t i = 0; i < hp * wp * B; ++i) plane[i] = T(0);
  for (int64_t r = 0; r < khw; ++r) {
    const int64_t col = c * khw + r;
    if (a.col_ptr[col] == a.col_ptr[col + 1]) continue;
    const int64_t coff = ((r / g.kw) * g.dh * wp + (r % g.kw) * g.dw) * B;
    int64_t p0 = 0;
    for (; p0 + kPix <= ohw; p0 += kPix) blocked_grad_input_pixels<T, kPix>(a, gyb, col, coff, p0, plane);
    for (; p0 < ohw; ++p0) blocked_grad_input_pixels<T, 1>(a, gyb, col, coff, p0, plane);
  }
  // Crop the padding and un-interleave into grad_input[n, c]; input pixels no window reaches get 0.
  const int64_t nb = std::min(B, g.n - bb * B);
  for (int64_t b = 0; b < nb; ++b) {
    T* __restrict__ dst = a.grad_input + ((bb * B + b) * g.c + c) * g.h * g.w;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t py = y + g.pt;
      T* drow = dst + y * g.w;
      if (py >= hp) {
        for (int64_t x = 0; x < g.w; ++x) drow[x] = T(0);
        continue;
      }
      const T* srow = plane + (py * wp + g.pl) * B + b;
      const int64_t wn = std::min(g.w, wp - g.pl);
      for (int64_t x = 0; x < wn; ++x) drow[x] = srow[x * B];
      for (int64_t x = wn; x < g.w; ++x) drow[x] = T(0);
    }
  }
}

// W kept weights j0..j0+W of row o, over all pixels of one batch block: sums[j] += gy . x shifted.
template <typename T, int W>
LF_INLINE void blocked_grad_weight_weights(const Args<T>& a, const T* gyo, const T* xb, int64_t j0, T* sums) {
  constexpr int64_t B = kLanes<T>;
  const int64_t ohw = a.g.ohw();
  Vec<T> acc[W];
  const T* base[W];
#pragma GCC unroll 8
  for (int q = 0; q < W; ++q) {
    base[q] = xb + a.off[j0 + q];
    acc[q] = vload(sums + q * B);
  }
  for (int64_t p = 0; p < ohw; ++p) {
    const Vec<T> gy = vload(gyo + p * B);
    const int64_t px = a.pix[p];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) acc[q] += gy * vload(base[q] + px);
  }
#pragma GCC unroll 8
  for (int q = 0; q < W; ++q) vstore(sums + q * B, acc[q]);
}

template <typename T>
LF_INLINE void blocked_grad_weight_impl(const Args<T>& a, int64_t o) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t ohw = g.ohw(), nblocks = (g.n + B - 1) / B, xblock = g.c * g.hp() * g.wp() * B;
  const int64_t j0 = a.row_ptr[o], j1 = a.row_ptr[o + 1];
  if (j0 == j1) return;
  // Lane-wise partial sums of the row's kept weights stay in this thread's scratch across blocks,
  // so each block's grad_out plane is reused from L1 for every kept weight.
  T* sums = a.scratch + thread_id() * a.scratch_len;
  for (int64_t i = 0; i < (j1 - j0) * B; ++i) sums[i] = T(0);
  for (int64_t bb = 0; bb < nblocks; ++bb) {
    const T* gyo = a.gyt + (bb * g.o + o) * ohw * B;
    const T* xb = a.xt + bb * xblock;
    int64_t j = j0;
    for (; j + kWts <= j1; j += kWts) blocked_grad_weight_weights<T, kWts>(a, gyo, xb, j, sums + (j - j0) * B);
    for (; j < j1; ++j) blocked_grad_weight_weights<T, 1>(a, gyo, xb, j, sums + (j - j0) * B);
  }
  const int64_t k = g.k();
  for (int64_t j = j0; j < j1; ++j) {
    T s = 0;
    for (int64_t b = 0; b < B; ++b) s += sums[(j - j0) * B + b];
    a.grad_weight[o * k + a.col_idx[j]] = s;
  }
}

// ---------------------------------------------------------------------------------------------
// ISA-dispatched task entry points: one clone set per (task, dtype).
// ---------------------------------------------------------------------------------------------
#define LF_CONV_TASK(NAME)                                                                   \
  LF_MULTIVERSION void NAME##_f32(const Args<float>& a, int64_t t) { NAME##_impl(a, t); }   \
  LF_MULTIVERSION void NAME##_f64(const Args<double>& a, int64_t t) { NAME##_impl(a, t); }  \
  inline void NAME(const Args<float>& a, int64_t t) { NAME##_f32(a, t); }                   \
  inline void NAME(const Args<double>& a, int64_t t) { NAME##_f64(a, t); }

LF_CONV_TASK(direct_forward)
LF_CONV_TASK(direct_grad_input)
LF_CONV_TASK(direct_grad_weight)
LF_CONV_TASK(blocked_forward)
LF_CONV_TASK(blocked_grad_input)
LF_CONV_TASK(blocked_grad_weight)
#undef LF_CONV_TASK

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

template <typename T>
std::unique_ptr<T[]> uninit(int64_t n) { return std::unique_ptr<T[]>(new T[std::max<int64_t>(n, 1)]); }

int resolve_algo(const ConvGeometry& g, int algo) {
  if (algo == kAuto) return g.n >= kBlockedMinBatch ? kBlocked : kDirect;
  if (algo != kDirect && algo != kBlocked)
    throw std::invalid_argument("masked_conv2d: algo must be 0 (auto), 1 (direct) or 2 (blocked), got " +
                                std::to_string(algo));
  return algo;
}

int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : max_threads(); }

// Threads for one pass: waking a team costs microseconds (far more on a busy machine), so small
// convolutions run on the calling thread. Work counts multiply-adds plus elements copied.
constexpr int64_t kParallelMinWork = 1 << 15;
int pass_threads(const ConvGeometry& g, int64_t nnz, int nt) {
  const int64_t work = g.n * (nnz * g.ohw() + g.c * g.h * g.w + g.o * g.ohw());
  return work < kParallelMinWork ? 1 : nt;
}

// Offsets of the blocked layout: per output pixel (window origin) and per kept weight (CSR order).
template <typename T>
void blocked_offsets(const ConvGeometry& g, const int32_t* cols, int64_t nnz, std::vector<int64_t>& pix,
                     std::vector<int64_t>& off) {
  constexpr int64_t B = kLanes<T>;
  const int64_t hp = g.hp(), wp = g.wp(), khw = g.kh * g.kw;
  pix.resize(g.ohw());
  for (int64_t y = 0; y < g.oh; ++y)
    for (int64_t x = 0; x < g.ow; ++x) pix[y * g.ow + x] = (y * g.sh * wp + x * g.sw) * B;
  off.resize(nnz);
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t col = cols[j], c = col / khw, r = col % khw;
    off[j] = ((c * hp + (r / g.kw) * g.dh) * wp + (r % g.kw) * g.dw) * B;
  }
}

template <typename T>
void forward(Args<T> a, int64_t nnz, int algo, int nt) {
  const ConvGeometry& g = a.g;
  nt = pass_threads(g, nnz, nt);
  if (g.n == 0) return;
  if (resolve_algo(g, algo) == kDirect) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t t = 0; t < g.n * g.o; ++t) direct_forward(a, t);
    return;
  }
  constexpr int64_t B = kLanes<T>;
  const int64_t nblocks = (g.n + B - 1) / B;
  auto xt = uninit<T>(nblocks * g.c * g.hp() * g.wp() * B);
  auto tiles = uninit<T>(nt * g.ohw() * B);
  std::vector<T> wv(nnz);
  std::vector<int64_t> pix, off;
  blocked_offsets<T>(g, a.col_idx, nnz, pix, off);
  const int64_t k = g.k();
  for (int64_t o = 0; o < g.o; ++o)
    for (int64_t j = a.row_ptr[o]; j < a.row_ptr[o + 1]; ++j) wv[j] = a.weight[o * k + a.col_idx[j]];
  a.xt = xt.get();
  a.wv = wv.data();
  a.off = off.data();
  a.pix = pix.data();
  a.scratch = tiles.get();
  a.scratch_len = g.ohw() * B;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < nblocks * g.c; ++t) pack_input(a, xt.get(), t);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nblocks * g.o; ++t) blocked_forward(a, t);
  }
}

template <typename T>
void backward(Args<T> a, T* grad_bias, int64_t nnz, int algo, int nt) {
  const ConvGeometry& g = a.g;
  nt = pass_threads(g, nnz, nt);
  const int64_t k = g.k(), ohw = g.ohw();
  if (a.grad_weight) {
    // Dense layout, zero where pruned; kept entries are overwritten below.
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < g.o * k; ++i) a.grad_weight[i] = T(0);
  }
  if (grad_bias) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t o = 0; o < g.o; ++o) {
      T s = 0;
      for (int64_t n = 0; n < g.n; ++n) {
        const T* gy = a.grad_out + (n * g.o + o) * ohw;
        T part = 0;
        LF_OMP_SIMD_SUM(part)
        for (int64_t p = 0; p < ohw; ++p) part += gy[p];
        s += part;
      }
      grad_bias[o] = s;
    }
  }
  if (g.n == 0 || (!a.grad_input && !a.grad_weight)) return;
  if (resolve_algo(g, algo) == kDirect) {
    if (a.grad_input) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t t = 0; t < g.n * g.c; ++t) direct_grad_input(a, t);
    }
    if (a.grad_weight) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
      for (int64_t o = 0; o < g.o; ++o) direct_grad_weight(a, o);
    }
    return;
  }
  constexpr int64_t B = kLanes<T>;
  const int64_t nblocks = (g.n + B - 1) / B, hp = g.hp(), wp = g.wp();
  std::vector<int64_t> pix, off;
  blocked_offsets<T>(g, a.col_idx, nnz, pix, off);
  a.pix = pix.data();
  a.off = off.data();
  auto gyt = uninit<T>(nblocks * g.o * ohw * B);
  a.gyt = gyt.get();
  std::unique_ptr<T[]> xt;
  if (a.grad_weight) {
    xt = uninit<T>(nblocks * g.c * hp * wp * B);
    a.xt = xt.get();
  }
  std::vector<T> wc;
  int64_t max_row = 0;
  for (int64_t o = 0; o < g.o; ++o) max_row = std::max(max_row, a.row_ptr[o + 1] - a.row_ptr[o]);
  if (a.grad_input) {
    wc.resize(nnz);
    for (int64_t col = 0; col < k; ++col)
      for (int64_t i = a.col_ptr[col]; i < a.col_ptr[col + 1]; ++i) wc[i] = a.weight[a.row_idx[i] * k + col];
    a.wc = wc.data();
  }
  // One scratch per thread, large enough for either pass (grad plane, or a row's lane sums).
  a.scratch_len = std::max(a.grad_input ? hp * wp * B : 0, a.grad_weight ? max_row * B : 0);
  auto scratch = uninit<T>(nt * a.scratch_len);
  a.scratch = scratch.get();
  T* xt_mut = xt.get();
  T* gyt_mut = gyt.get();
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < nblocks * g.o; ++t) pack_grad_out(a, gyt_mut, t);
    if (xt_mut) {
#pragma omp for schedule(static) nowait
      for (int64_t t = 0; t < nblocks * g.c; ++t) pack_input(a, xt_mut, t);
    }
#pragma omp barrier
    if (a.grad_input) {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t t = 0; t < nblocks * g.c; ++t) blocked_grad_input(a, t);
    }
    if (a.grad_weight) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t o = 0; o < g.o; ++o) blocked_grad_weight(a, o);
    }
  }
}

template <typename T>
Args<T> make_args(const ConvGeometry& g, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t row_ptr,
                  std::uintptr_t col_idx) {
  Args<T> a;
  a.g = g;
  a.x = as_ptr<const T>(x);
  a.weight = as_ptr<const T>(weight);
  a.row_ptr = as_ptr<const int64_t>(row_ptr);
  a.col_idx = as_ptr<const int32_t>(col_idx);
  return a;
}

void check_nnz(const ConvGeometry& g, std::uintptr_t row_ptr, int64_t nnz) {
  const int64_t* rp = as_ptr<const int64_t>(row_ptr);
  if (rp[0] != 0 || rp[g.o] != nnz || nnz < 0 || nnz > g.o * g.k())
    throw std::invalid_argument("masked_conv2d: index does not match the geometry (row_ptr[0]=" +
                                std::to_string(rp[0]) + ", row_ptr[out]=" + std::to_string(rp[g.o]) +
                                ", nnz=" + std::to_string(nnz) + ", out*k=" + std::to_string(g.o * g.k()) + ")");
}

}  // namespace conv_detail

void register_masked_conv(py::module_& m) {
  using conv_detail::ConvGeometry;
  py::class_<ConvGeometry>(m, "ConvGeometry",
                           "Shapes of one conv2d call: input [n,c,h,w], weight [o,c,kh,kw], output [n,o,oh,ow], "
                           "stride, top/left padding (bottom/right implied by oh, ow), dilation.")
      .def(py::init([](int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t oh,
                       int64_t ow, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw) {
             ConvGeometry g{n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw};
             g.validate();
             return g;
           }),
           py::arg("n"), py::arg("c"), py::arg("h"), py::arg("w"), py::arg("o"), py::arg("kh"), py::arg("kw"),
           py::arg("oh"), py::arg("ow"), py::arg("sh") = 1, py::arg("sw") = 1, py::arg("pt") = 0, py::arg("pl") = 0,
           py::arg("dh") = 1, py::arg("dw") = 1)
      .def_readonly("n", &ConvGeometry::n)
      .def_readonly("c", &ConvGeometry::c)
      .def_readonly("o", &ConvGeometry::o)
      .def_readonly("oh", &ConvGeometry::oh)
      .def_readonly("ow", &ConvGeometry::ow)
      .def("__repr__", [](const ConvGeometry& g) {
        auto s = [](int64_t v) { return std::to_string(v); };
        return "ConvGeometry(n=" + s(g.n) + ", c=" + s(g.c) + ", h=" + s(g.h) + ", w=" + s(g.w) + ", o=" + s(g.o) +
               ", kh=" + s(g.kh) + ", kw=" + s(g.kw) + ", oh=" + s(g.oh) + ", ow=" + s(g.ow) + ", stride=(" +
               s(g.sh) + "," + s(g.sw) + "), pad=(" + s(g.pt) + "," + s(g.pl) + "), dilation=(" + s(g.dh) + "," +
               s(g.dw) + "))";
      });

  m.def(
      "masked_conv2d_forward",
      [](const ConvGeometry& g, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias, std::uintptr_t out,
         std::uintptr_t row_ptr, std::uintptr_t col_idx, int64_t nnz, int dtype, int algo, int num_threads) {
        conv_detail::check_nnz(g, row_ptr, nnz);
        conv_detail::resolve_algo(g, algo);  // validate before releasing the GIL
        const int nt = conv_detail::resolve_threads(num_threads);
        py::gil_scoped_release release;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          auto a = conv_detail::make_args<T>(g, x, weight, row_ptr, col_idx);
          a.bias = as_ptr<const T>(bias);
          a.out = as_ptr<T>(out);
          conv_detail::forward(a, nnz, algo, nt);
        });
      },
      py::arg("geometry"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("row_ptr"),
      py::arg("col_idx"), py::arg("nnz"), py::arg("dtype"), py::arg("algo") = 0, py::arg("num_threads") = 0,
      "out[n,o,oh,ow] = bias + conv2d over the kept weights (CSR row_ptr int64 / col_idx int32 over [o, c*kh*kw]). "
      "Pointers are data pointers of contiguous CPU buffers; bias 0 means none. algo: 0 auto, 1 direct, 2 blocked.");

  m.def(
      "masked_conv2d_backward",
      [](const ConvGeometry& g, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t grad_out,
         std::uintptr_t grad_input, std::uintptr_t grad_weight, std::uintptr_t grad_bias, std::uintptr_t row_ptr,
         std::uintptr_t col_idx, std::uintptr_t col_ptr, std::uintptr_t row_idx, int64_t nnz, int dtype, int algo,
         int num_threads) {
        conv_detail::check_nnz(g, row_ptr, nnz);
        conv_detail::resolve_algo(g, algo);
        const int nt = conv_detail::resolve_threads(num_threads);
        py::gil_scoped_release release;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          auto a = conv_detail::make_args<T>(g, x, weight, row_ptr, col_idx);
          a.col_ptr = as_ptr<const int64_t>(col_ptr);
          a.row_idx = as_ptr<const int32_t>(row_idx);
          a.grad_out = as_ptr<const T>(grad_out);
          a.grad_input = as_ptr<T>(grad_input);
          a.grad_weight = as_ptr<T>(grad_weight);
          conv_detail::backward(a, as_ptr<T>(grad_bias), nnz, algo, nt);
        });
      },
      py::arg("geometry"), py::arg("x"), py::arg("weight"), py::arg("grad_out"), py::arg("grad_input"),
      py::arg("grad_weight"), py::arg("grad_bias"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("col_ptr"),
      py::arg("row_idx"), py::arg("nnz"), py::arg("dtype"), py::arg("algo") = 0, py::arg("num_threads") = 0,
      "Gradients of masked_conv2d_forward. Any of grad_input [n,c,h,w], grad_weight [o,c,kh,kw] (dense, zero where "
      "pruned) and grad_bias [o] may be 0 to skip it. Needs the CSR and the CSC of the mask.");

  m.def(
      "masked_conv2d_algo",
      [](const ConvGeometry& g, int algo) { return conv_detail::resolve_algo(g, algo); }, py::arg("geometry"),
      py::arg("algo") = 0, "Algorithm a call with this geometry runs: 1 direct, 2 blocked.");
}

}  // namespace lf
