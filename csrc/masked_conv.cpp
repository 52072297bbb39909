// Masked (sparse-filter) conv2d on the CPU: forward, grad_input, grad_weight, grad_bias.
//
// The filter is read through the mask's compressed index (CSR over output channels, CSC over the
// flattened (c, kh, kw) columns, see lottery_fast/nn/sparse_index.py): weight[o * k + col] with
// k = C*KH*KW and col = (c*KH + kh)*KW + kw. Pruned weights are never read, so the work scales
// with the number of kept weights. groups == 1 only; NCHW input, any stride and dilation, top/left
// padding given explicitly and bottom/right padding implied by the output size (so asymmetric
// "same" padding needs nothing special).
//
// Three direct algorithms (no im2col):
//  * blocked (batches from kBlockedMinBatch): the batch is the SIMD axis. The input is copied into
//    a zero-padded [batch block][C][Hp][Wp][B] layout, B = one 64-byte vector of lanes, so an
//    output pixel of B images is one register, every kept weight is one constant offset, and the
//    hot loops are a broadcast FMA with one aligned load per kept weight, no bounds checks.
//  * flat (smaller batches): output pixels are the SIMD axis. Each zero-padded input plane is
//    split by stride phase (see FlatLayout) and read as flat arrays: output (y, x) sits at flat
//    index y*Wq + x and kept weight (c, kh, kw) reads it at a constant offset, so 16 neighbouring
//    outputs are one contiguous load per weight; the few columns past each output row are
//    computed and dropped.
//  * direct (only on request): per (image, output channel) each kept weight adds
//    w * (shifted input plane) into the output plane; no copies, the plain reference loop.
// Blocked and flat hold kVecs output vectors in registers while they sum over the kept weights.
// Every output element is written by one task in a fixed summation order (grad_weight sums the
// batch in fixed parts, added in order), so results do not depend on the thread count.
//
// Hot per-task functions are stamped per ISA (AVX-512, AVX2+FMA, baseline; see detect_isa() in
// common.h) and the OpenMP loops stay in plain drivers: GCC outlines a parallel region into a
// function of its own, which would not inherit the stamp's target attribute.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <new>
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

enum Algo : int { kAuto = 0, kDirect = 1, kBlocked = 2, kFlat = 3 };

// Batch from which auto takes the blocked algorithm: below it the lanes of a batch block are so
// empty that flat is faster (measured on MinAtar- and Atari-sized layers at 50% and 90% sparsity,
// where the two meet at batches of 8 to 16).
constexpr int64_t kBlockedMinBatch = 12;

struct ConvGeometry {
  int64_t n, c, h, w;        // input  [n, c, h, w]
  int64_t o, kh, kw;         // weight [o, c, kh, kw]
  int64_t oh, ow;            // output [n, o, oh, ow]
  int64_t sh, sw;            // stride
  int64_t pt, pl;            // top / left zero padding (bottom / right follow from oh, ow)
  int64_t dh, dw;            // dilation

  int64_t k() const { return c * kh * kw; }
  int64_t khw() const { return kh * kw; }
  int64_t ohw() const { return oh * ow; }
  // Padded extent of the input that the outputs read (rows and columns past it are never read).
  int64_t hp() const { return (oh - 1) * sh + (kh - 1) * dh + 1; }
  int64_t wp() const { return (ow - 1) * sw + (kw - 1) * dw + 1; }
  // Offset of kernel tap r = kh*KW + kw inside a padded [hp][wp] plane.
  int64_t tap(int64_t r) const { return (r / kw) * dh * wp() + (r % kw) * dw; }

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
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Outputs i in [0, out) whose input index i*stride + offset lies in [0, in).
struct Range { int64_t lo, hi; };
inline Range valid_range(int64_t out, int64_t in, int64_t stride, int64_t offset) {
  int64_t lo = offset >= 0 ? 0 : ceil_div(-offset, stride);
  int64_t hi = floor_div(in - 1 - offset, stride) + 1;
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, out);
  return {lo, std::max(lo, hi)};
}

// One 64-byte vector of lanes (an AVX-512 register, two AVX2 ones, four SSE2). GCC vector types
// keep the sums in registers whatever the ISA of the stamp.
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

// The vector helpers are always inlined into their stamp, so no vector ever crosses a call
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

// Output vectors whose sums are held in registers at once (forward, grad_input).
constexpr int kVecs = 4;
// Kept weights whose gradient sums are held in registers at once (grad_weight).
constexpr int kWts = 4;
// Blocked forward tasks: runs of this many output pixels with the output channels inner, so the
// input window of kVecs pixels is read from L1 by every channel's kept weights.
constexpr int64_t kPixPerTask = 32;
// Flat tasks take whole images until they hold about this many output vectors, so the short
// last group of kVecs is rare.
constexpr int64_t kSlotsPerTask = 32;
// grad_weight sums the batch in fixed parts (blocked: runs of kPixPerPart pixels of one batch
// block; flat: images worth about kSlotsPerPart output vectors) whose input stays in L2 while
// every kept weight reads it; the parts' sums are added in order, so the result does not
// depend on the thread count.
constexpr int64_t kPixPerPart = 64;
constexpr int64_t kSlotsPerPart = 256;

// The flat algorithm's layout. A stride (sh, sw) splits each padded input plane into sh*sw
// phase planes, phase (ph, pw) holding the rows ph, ph+sh, ... and columns pw, pw+sw, ...; tap
// (kh, kw) then reads phase ((kh*dh) % sh, (kw*dw) % sw) at the unit-stride shift
// ((kh*dh) / sh, (kw*dw) / sw), so every stride is a unit-stride convolution over sh*sw times
// the channels. Packed x: [n][c][phase][hq][wq], then slack; packed grad_out: [n][o][gstride].
struct FlatLayout {
  int64_t phases;       // sh * sw
  int64_t hq, wq;       // phase plane extent: output rows/columns plus the largest tap shift
  int64_t plane, img;   // hq * wq, and c * phases * plane per image
  int64_t vout, vin;    // vectors covering the oh*wq output run and one phase plane
  int64_t margin;       // largest tap shift: zeros in front of each grad_out plane
  int64_t gstride;      // margin + plane + one vector
  int64_t xslack;       // zeros after the last image (reads run past a plane by this much)
  bool in_place;        // x is already flat (stride 1, no padding): read it directly, pack the
                        // last image only
  int64_t group;        // images per forward task
  int64_t ogroup;       // output channels per forward task (set by the driver)
  int64_t group_in;     // images per grad_input task
  int64_t group_w;      // images per grad_weight part

  // Tap r = kh*KW + kw: its phase, and its shift inside the phase plane.
  static int64_t phase(const ConvGeometry& g, int64_t r) {
    return ((r / g.kw) * g.dh % g.sh) * g.sw + (r % g.kw) * g.dw % g.sw;
  }
  int64_t shift(const ConvGeometry& g, int64_t r) const {
    return ((r / g.kw) * g.dh / g.sh) * wq + (r % g.kw) * g.dw / g.sw;
  }

  template <typename T>
  static FlatLayout of(const ConvGeometry& g) {
    constexpr int64_t L = kLanes<T>;
    FlatLayout f;
    f.phases = g.sh * g.sw;
    f.hq = g.oh + (g.kh - 1) * g.dh / g.sh;
    f.wq = g.ow + (g.kw - 1) * g.dw / g.sw;
    f.plane = f.hq * f.wq;
    f.img = g.c * f.phases * f.plane;
    f.vout = ceil_div(g.oh * f.wq, L);
    f.vin = ceil_div(f.plane, L);
    f.margin = f.shift(g, g.khw() - 1);
    f.gstride = f.margin + f.plane + L;
    f.xslack = (g.kw - 1) * g.dw / g.sw + L;
    // Reads run up to xslack past an image: into the next image, or, for the last, into the
    // zeroed slack of its packed copy.
    f.in_place = f.phases == 1 && g.pt == 0 && g.pl == 0 && f.hq == g.h && f.wq == g.w && f.img >= f.xslack;
    f.group = std::max<int64_t>(1, kSlotsPerTask / f.vout);
    f.group_in = std::max<int64_t>(1, kSlotsPerTask / (f.phases * f.vin));
    f.group_w = std::max<int64_t>(1, kSlotsPerPart / f.vout);
    return f;
  }
};

// Everything a task reads or writes; the drivers fill in what their pass needs.
template <typename T>
struct Args {
  ConvGeometry g;
  FlatLayout f;
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
  // Flat and blocked algorithms: packed copies and offsets into them.
  T* xp = nullptr;               // packed input
  T* gp = nullptr;               // packed grad_out
  const T* wv = nullptr;         // kept weights in CSR order
  const T* wc = nullptr;         // grad_input pairs: kept weights (CSC order, flat: by phase)
  const int64_t* off = nullptr;  // CSR order: offset of kept weight (c, kh, kw) in one image/block
  const int64_t* cdelta = nullptr;  // grad_input pairs: offset of kept weight (o, kh, kw) in gp
  const int64_t* cptr = nullptr;    // flat: grad_input pairs grouped by (c, phase); group starts
  const int64_t* pix = nullptr;     // blocked: offset of each output pixel's window in a channel
  T* partial = nullptr;             // grad_weight: per part of the batch, per kept weight (CSR order)
  int64_t nnz = 0;
  bool gw_packed = false;  // grad_weight is [nnz] in CSR order: the kept weights' gradient only
  T* scratch = nullptr;          // per thread, scratch_len elements each
  int64_t scratch_len = 0;

  T* my_scratch() const { return scratch + thread_id() * scratch_len; }
};

// ---------------------------------------------------------------------------------------------
// Direct algorithm (NCHW in place)
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
    a.grad_weight[a.gw_packed ? j : o * k + col] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Register-blocked sums shared by the flat and blocked algorithms
// ---------------------------------------------------------------------------------------------

// For V output vectors ("slots") at once: acc[v] = init + sum_i w[i] * x[base(s0+v) + delta[i]],
// then *dst(s0+v) = acc[v] (or += when Add). Every kept weight costs one broadcast and V loads.
template <typename T, int V, bool Add, typename BaseFn, typename DstFn>
LF_INLINE void pair_sums(int64_t s0, const BaseFn& base, const DstFn& dst, const T* w, const int64_t* delta,
                         int64_t i0, int64_t i1, T init) {
  const T* ptr[V];
  Vec<T> acc[V];
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v) {
    ptr[v] = base(s0 + v);
    acc[v] = vsplat<T>(init);
  }
  for (int64_t i = i0; i < i1; ++i) {
    const T wi = w[i];
    const int64_t d = delta[i];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[v] += wi * vload(ptr[v] + d);
  }
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v) {
    T* out = dst(s0 + v);
    vstore(out, Add ? vload(out) + acc[v] : acc[v]);
  }
}

template <typename T, int R, bool Add, typename BaseFn, typename DstFn>
LF_INLINE void pair_sums_tail(int64_t rem, int64_t s0, const BaseFn& base, const DstFn& dst, const T* w,
                              const int64_t* delta, int64_t i0, int64_t i1, T init) {
  if constexpr (R > 0) {
    if (rem == R) pair_sums<T, R, Add>(s0, base, dst, w, delta, i0, i1, init);
    else pair_sums_tail<T, R - 1, Add>(rem, s0, base, dst, w, delta, i0, i1, init);
  }
}

// pair_sums over slots [0, nslots): full groups of kVecs, then one shorter group.
template <typename T, bool Add, typename BaseFn, typename DstFn>
LF_INLINE void pair_sums_all(int64_t nslots, const BaseFn& base, const DstFn& dst, const T* w,
                             const int64_t* delta, int64_t i0, int64_t i1, T init) {
  int64_t s = 0;
  for (; s + kVecs <= nslots; s += kVecs) pair_sums<T, kVecs, Add>(s, base, dst, w, delta, i0, i1, init);
  pair_sums_tail<T, kVecs - 1, Add>(nslots - s, s, base, dst, w, delta, i0, i1, init);
}

// Gradient of W kept weights: lane-wise sum over slots of grad(slot) * x(slot + off[q]). The
// caller walks the slots; this holds the W sums in registers.
template <typename T, int W>
struct DotChunk {
  Vec<T> acc[W];
  int64_t off[W];
  LF_INLINE DotChunk(const int64_t* offsets) {
#pragma GCC unroll 16
    for (int q = 0; q < W; ++q) {
      acc[q] = Vec<T>{};
      off[q] = offsets[q];
    }
  }
  LF_INLINE void add(const T* gy, const T* x) {
    const Vec<T> g = vload(gy);
#pragma GCC unroll 16
    for (int q = 0; q < W; ++q) acc[q] += g * vload(x + off[q]);
  }
  LF_INLINE void finish(T* out) const {
    constexpr int64_t L = kLanes<T>;
    for (int q = 0; q < W; ++q) {
      T lanes[L];
      vstore(lanes, acc[q]);
      T s = 0;
      for (int64_t b = 0; b < L; ++b) s += lanes[b];
      out[q] = s;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Flat algorithm
// ---------------------------------------------------------------------------------------------

// Images the flat algorithm copies: all of them, or only the last when x is read in place.
template <typename T>
int64_t flat_first_packed(const Args<T>& a) { return a.f.in_place ? a.g.n - 1 : 0; }

// Image n as flat [c][phase][hq][wq] planes, followed by at least xslack readable elements.
template <typename T>
LF_INLINE const T* flat_image(const Args<T>& a, int64_t n) {
  if (!a.f.in_place) return a.xp + n * a.f.img;
  return n + 1 < a.g.n ? a.x + n * a.f.img : a.xp;
}

// Packed phase planes of (image, channel) task of the copied images, zero where they fall into
// the padding; the last image is followed by zeroed slack.
template <typename T>
void flat_pack_input(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  const T* src = a.x + (flat_first_packed(a) * g.c + task) * g.h * g.w;
  T* dst = a.xp + task * f.phases * f.plane;
  for (int64_t ph = 0; ph < g.sh; ++ph)
    for (int64_t pw = 0; pw < g.sw; ++pw, dst += f.plane) {
      const Range rows = valid_range(f.hq, g.h, g.sh, ph - g.pt), cols = valid_range(f.wq, g.w, g.sw, pw - g.pl);
      for (int64_t y = 0; y < f.hq; ++y) {
        T* __restrict__ drow = dst + y * f.wq;
        if (y < rows.lo || y >= rows.hi) {
          for (int64_t x = 0; x < f.wq; ++x) drow[x] = T(0);
          continue;
        }
        const T* __restrict__ srow = src + (y * g.sh + ph - g.pt) * g.w + pw - g.pl;
        for (int64_t x = 0; x < cols.lo; ++x) drow[x] = T(0);
        if (g.sw == 1) {
          for (int64_t x = cols.lo; x < cols.hi; ++x) drow[x] = srow[x];
        } else {
          for (int64_t x = cols.lo; x < cols.hi; ++x) drow[x] = srow[x * g.sw];
        }
        for (int64_t x = cols.hi; x < f.wq; ++x) drow[x] = T(0);
      }
    }
  if (task == (g.n - flat_first_packed(a)) * g.c - 1) std::fill(dst, dst + f.xslack, T(0));
}

// Packed grad_out plane (n, o): margin zeros, rows of width wq (columns >= ow zero), zeros.
template <typename T>
void flat_pack_grad_out(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  T* dst = a.gp + task * f.gstride;
  const T* src = a.grad_out + task * g.ohw();
  std::fill(dst, dst + f.margin, T(0));
  T* body = dst + f.margin;
  for (int64_t y = 0; y < g.oh; ++y) {
    T* __restrict__ drow = body + y * f.wq;
    const T* __restrict__ srow = src + y * g.ow;
    for (int64_t x = 0; x < g.ow; ++x) drow[x] = srow[x];
    for (int64_t x = g.ow; x < f.wq; ++x) drow[x] = T(0);
  }
  std::fill(body + g.oh * f.wq, dst + f.gstride, T(0));
}

// Task (image group, output-channel group): the flat outputs of images [n0, n0+G) for channels
// [o0, o0+og), then cropped. Channels are the inner loop, so the input window of kVecs output
// vectors is read from L1 by every channel's kept weights.
template <typename T>
LF_INLINE void flat_forward_impl(const Args<T>& a, int64_t task) {
  constexpr int64_t L = kLanes<T>;
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  const int64_t ogroups = ceil_div(g.o, f.ogroup), n0 = (task / ogroups) * f.group;
  const int64_t o0 = (task % ogroups) * f.ogroup, o1 = std::min(g.o, o0 + f.ogroup);
  const int64_t gn = std::min(f.group, g.n - n0), vout = f.vout, slots = gn * vout;
  T* tile = a.my_scratch();  // [o - o0][slot][L]
  for (int64_t s0 = 0; s0 < slots; s0 += kVecs) {
    const int64_t ns = std::min<int64_t>(kVecs, slots - s0);
    const T* base[kVecs];
    for (int64_t s = 0; s < ns; ++s) base[s] = flat_image(a, n0 + (s0 + s) / vout) + ((s0 + s) % vout) * L;
    for (int64_t o = o0; o < o1; ++o) {
      T* dst = tile + ((o - o0) * slots + s0) * L;
      pair_sums_all<T, false>(
          ns, [&](int64_t s) { return base[s]; }, [&](int64_t s) { return dst + s * L; }, a.wv, a.off,
          a.row_ptr[o], a.row_ptr[o + 1], a.bias ? a.bias[o] : T(0));
    }
  }
  for (int64_t m = 0; m < gn; ++m)
    for (int64_t o = o0; o < o1; ++o) {
      T* dst = a.out + ((n0 + m) * g.o + o) * g.ohw();
      const T* src = tile + ((o - o0) * slots + m * vout) * L;
      for (int64_t y = 0; y < g.oh; ++y)
        for (int64_t x = 0; x < g.ow; ++x) dst[y * g.ow + x] = src[y * f.wq + x];
    }
}

// Task (image group, c): the grad phase planes of channel c, each summed over the kept (o, kh, kw)
// of the channel's taps of that phase (cdelta = o's plane in gp minus the tap's shift), then
// reassembled and cropped into grad_input.
template <typename T>
LF_INLINE void flat_grad_input_impl(const Args<T>& a, int64_t task) {
  constexpr int64_t L = kLanes<T>;
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  const int64_t c = task % g.c, n0 = (task / g.c) * f.group_in, gn = std::min(f.group_in, g.n - n0);
  const int64_t vin = f.vin, img = g.o * f.gstride, planes = f.phases * vin * L;
  const T* gg = a.gp + n0 * img + f.margin;
  T* tile = a.my_scratch();  // [image][phase][vin * L]
  for (int64_t phase = 0; phase < f.phases; ++phase) {
    const int64_t i0 = a.cptr[c * f.phases + phase], i1 = a.cptr[c * f.phases + phase + 1];
    T* ptile = tile + phase * vin * L;
    pair_sums_all<T, false>(
        gn * vin, [&](int64_t s) { return gg + (s / vin) * img + (s % vin) * L; },
        [&](int64_t s) { return ptile + (s / vin) * planes + (s % vin) * L; }, a.wc, a.cdelta, i0, i1, T(0));
  }
  // Padded (y, x) is phase (y % sh, x % sw) at (y / sh, x / sw); input pixels that no window
  // reaches get 0.
  for (int64_t m = 0; m < gn; ++m) {
    T* dst = a.grad_input + ((n0 + m) * g.c + c) * g.h * g.w;
    for (int64_t iy = 0; iy < g.h; ++iy) {
      T* __restrict__ drow = dst + iy * g.w;
      const int64_t y = iy + g.pt, yq = y / g.sh;
      if (yq >= f.hq) {
        for (int64_t ix = 0; ix < g.w; ++ix) drow[ix] = T(0);
        continue;
      }
      for (int64_t pw = 0; pw < g.sw; ++pw) {
        // Input columns ix with (ix + pl) % sw == pw, read from phase plane (y % sh, pw).
        const T* src = tile + m * planes + ((y % g.sh) * g.sw + pw) * vin * L + yq * f.wq;
        const int64_t first = ((pw - g.pl) % g.sw + g.sw) % g.sw;
        int64_t xq = (first + g.pl) / g.sw;
        for (int64_t ix = first; ix < g.w; ix += g.sw, ++xq) drow[ix] = xq < f.wq ? src[xq] : T(0);
      }
    }
  }
}

// Lane sums of W kept weights j0.. of row o over the images of one part. Flat positions in the
// dropped columns have grad_out 0, so they add nothing.
template <typename T, int W>
LF_INLINE void flat_grad_weight_chunk(const Args<T>& a, int64_t part, int64_t o, int64_t j0, T* out) {
  constexpr int64_t L = kLanes<T>;
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  DotChunk<T, W> dot(a.off + j0);
  const int64_t vout = f.vout, n1 = std::min(g.n, (part + 1) * f.group_w);
  for (int64_t n = part * f.group_w; n < n1; ++n) {
    const T* gy = a.gp + (n * g.o + o) * f.gstride + f.margin;
    const T* xn = flat_image(a, n);
    for (int64_t v = 0; v < vout; ++v) dot.add(gy + v * L, xn + v * L);
  }
  dot.finish(out);
}

// ---------------------------------------------------------------------------------------------
// Blocked algorithm (batch on the SIMD axis)
// ---------------------------------------------------------------------------------------------

// dst[i*B + b] = src[b*stride + i] for i < len: B images' rows interleaved lane-wise (lanes past
// the batch are zero).
template <typename T>
LF_INLINE void interleave_rows(T* __restrict__ dst, const T* __restrict__ src, int64_t stride, int64_t len,
                               int64_t lanes) {
  constexpr int64_t B = kLanes<T>;
  if (lanes == B) {
    for (int64_t i = 0; i < len; ++i)
#pragma GCC unroll 16
      for (int64_t b = 0; b < B; ++b) dst[i * B + b] = src[b * stride + i];
    return;
  }
  for (int64_t i = 0; i < len; ++i) {
    for (int64_t b = 0; b < lanes; ++b) dst[i * B + b] = src[b * stride + i];
    for (int64_t b = lanes; b < B; ++b) dst[i * B + b] = T(0);
  }
}

// Packed block (bb, c): zero-padded, lane-interleaved copy of x[bb*B : bb*B+B, c], [hp][wp][B].
template <typename T>
LF_INLINE void blocked_pack_input_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.c, c = task % g.c, hp = g.hp(), wp = g.wp();
  const int64_t lanes = std::min(B, g.n - bb * B), img = g.c * g.h * g.w;
  const int64_t lo = std::min(g.pl, wp), hi = std::min(g.pl + g.w, wp);
  T* dst = a.xp + task * hp * wp * B;
  const T* src = a.x + (bb * B * g.c + c) * g.h * g.w;
  for (int64_t y = 0; y < hp; ++y) {
    T* drow = dst + y * wp * B;
    const int64_t iy = y - g.pt;
    if (iy < 0 || iy >= g.h) {
      std::fill(drow, drow + wp * B, T(0));
      continue;
    }
    std::fill(drow, drow + lo * B, T(0));
    interleave_rows(drow + lo * B, src + iy * g.w + (lo - g.pl), img, hi - lo, lanes);
    std::fill(drow + hi * B, drow + wp * B, T(0));
  }
}

// Packed block (bb, o): lane-interleaved copy of grad_out[bb*B : bb*B+B, o], [oh*ow][B].
template <typename T>
LF_INLINE void blocked_pack_grad_out_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.o, o = task % g.o, ohw = g.ohw();
  interleave_rows(a.gp + task * ohw * B, a.grad_out + (bb * B * g.o + o) * ohw, g.o * ohw, ohw,
                  std::min(B, g.n - bb * B));
}

// Task (block, run of kPixPerTask output pixels): those pixels of B images for every output
// channel, then un-interleaved into NCHW. Channels are the inner loop, so the input window of
// kVecs pixels is read from L1 by every channel's kept weights.
template <typename T>
LF_INLINE void blocked_forward_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t runs = ceil_div(g.ohw(), kPixPerTask), bb = task / runs;
  const int64_t p0 = (task % runs) * kPixPerTask, np = std::min(kPixPerTask, g.ohw() - p0);
  const T* xb = a.xp + bb * g.c * g.hp() * g.wp() * B;
  T* tile = a.my_scratch();  // [o][np][B]
  const int64_t* pix = a.pix + p0;
  for (int64_t x0 = 0; x0 < np; x0 += kVecs) {
    const int64_t nx = std::min<int64_t>(kVecs, np - x0);
    for (int64_t o = 0; o < g.o; ++o) {
      T* dst = tile + (o * np + x0) * B;
      pair_sums_all<T, false>(
          nx, [&](int64_t p) { return xb + pix[x0 + p]; }, [&](int64_t p) { return dst + p * B; }, a.wv, a.off,
          a.row_ptr[o], a.row_ptr[o + 1], a.bias ? a.bias[o] : T(0));
    }
  }
  const int64_t lanes = std::min(B, g.n - bb * B);
  for (int64_t b = 0; b < lanes; ++b)
    for (int64_t o = 0; o < g.o; ++o) {
      T* __restrict__ dst = a.out + ((bb * B + b) * g.o + o) * g.ohw() + p0;
      const T* src = tile + o * np * B + b;
      for (int64_t p = 0; p < np; ++p) dst[p] = src[p * B];
    }
}

// Task (block, c): for each column (c, kh, kw), every grad_out pixel summed over the column's kept
// o (cdelta = o's plane offset in the block) and added at the tap; then cropped and un-interleaved.
template <typename T>
LF_INLINE void blocked_grad_input_impl(const Args<T>& a, int64_t task) {
  const ConvGeometry& g = a.g;
  constexpr int64_t B = kLanes<T>;
  const int64_t bb = task / g.c, c = task % g.c, ohw = g.ohw(), hp = g.hp(), wp = g.wp();
  const int64_t khw = g.khw();
  const T* gb = a.gp + bb * g.o * ohw * B;
  T* plane = a.my_scratch();  // [hp][wp][B]
  std::fill(plane, plane + hp * wp * B, T(0));
  const int64_t* pix = a.pix;
  for (int64_t r = 0; r < khw; ++r) {
    const int64_t col = c * khw + r;
    if (a.col_ptr[col] == a.col_ptr[col + 1]) continue;
    T* tapped = plane + g.tap(r) * B;
    pair_sums_all<T, true>(
        ohw, [&](int64_t p) { return gb + p * B; }, [&](int64_t p) { return tapped + pix[p]; }, a.wc, a.cdelta,
        a.col_ptr[col], a.col_ptr[col + 1], T(0));
  }
  const int64_t lanes = std::min(B, g.n - bb * B), wn = std::min(g.w, wp - g.pl);
  for (int64_t b = 0; b < lanes; ++b) {
    T* __restrict__ dst = a.grad_input + ((bb * B + b) * g.c + c) * g.h * g.w;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t py = y + g.pt;
      T* drow = dst + y * g.w;
      const int64_t valid = py < hp ? wn : 0;
      const T* srow = plane + (py * wp + g.pl) * B + b;
      for (int64_t x = 0; x < valid; ++x) drow[x] = srow[x * B];
      for (int64_t x = valid; x < g.w; ++x) drow[x] = T(0);
    }
  }
}

// Lane sums of W kept weights j0.. of row o over one part: a run of kPixPerPart output pixels
// of one batch block (the run's input window stays in L2 for every kept weight).
template <typename T, int W>
LF_INLINE void blocked_grad_weight_chunk(const Args<T>& a, int64_t part, int64_t o, int64_t j0, T* out) {
  constexpr int64_t B = kLanes<T>;
  const ConvGeometry& g = a.g;
  const int64_t ohw = g.ohw(), runs = ceil_div(ohw, kPixPerPart), bb = part / runs;
  const int64_t p0 = (part % runs) * kPixPerPart, p1 = std::min(ohw, p0 + kPixPerPart);
  DotChunk<T, W> dot(a.off + j0);
  const T* gy = a.gp + (bb * g.o + o) * ohw * B;
  const T* xb = a.xp + bb * g.c * g.hp() * g.wp() * B;
  for (int64_t p = p0; p < p1; ++p) dot.add(gy + p * B, xb + a.pix[p]);
  dot.finish(out);
}

// Task (part, o): partial gradients of row o's kept weights over one part of the batch.
#define LF_GRAD_WEIGHT_IMPL(ALGO)                                                                       \
  template <typename T, int R>                                                                           \
  LF_INLINE void ALGO##_grad_weight_tail(const Args<T>& a, int64_t count, int64_t part, int64_t o,       \
                                         int64_t j0) {                                                   \
    if constexpr (R > 0) {                                                                               \
      if (count == R) ALGO##_grad_weight_chunk<T, R>(a, part, o, j0, a.partial + part * a.nnz + j0);    \
      else ALGO##_grad_weight_tail<T, R - 1>(a, count, part, o, j0);                                     \
    }                                                                                                    \
  }                                                                                                      \
  template <typename T>                                                                                  \
  LF_INLINE void ALGO##_grad_weight_impl(const Args<T>& a, int64_t task) {                               \
    const int64_t part = task / a.g.o, o = task % a.g.o, j1 = a.row_ptr[o + 1];                          \
    for (int64_t j0 = a.row_ptr[o]; j0 < j1; j0 += kWts)                                                 \
      ALGO##_grad_weight_tail<T, kWts>(a, std::min<int64_t>(kWts, j1 - j0), part, o, j0);               \
  }
LF_GRAD_WEIGHT_IMPL(flat)
LF_GRAD_WEIGHT_IMPL(blocked)
#undef LF_GRAD_WEIGHT_IMPL

// ---------------------------------------------------------------------------------------------
// ISA-dispatched task entry points: three stamps per (task, dtype), picked once.
// ---------------------------------------------------------------------------------------------
#define LF_CONV_TASK_T(NAME, T, SUFFIX)                                                                \
  void NAME##_base_##SUFFIX(const Args<T>& a, int64_t t) { NAME##_impl(a, t); }                          \
  LF_TARGET_AVX2 void NAME##_avx2_##SUFFIX(const Args<T>& a, int64_t t) { NAME##_impl(a, t); }           \
  LF_TARGET_AVX512 void NAME##_avx512_##SUFFIX(const Args<T>& a, int64_t t) { NAME##_impl(a, t); }       \
  inline void NAME(const Args<T>& a, int64_t t) {                                                        \
    static const auto f = pick_isa(&NAME##_base_##SUFFIX, &NAME##_avx2_##SUFFIX, &NAME##_avx512_##SUFFIX); \
    f(a, t);                                                                                             \
  }
#define LF_CONV_TASK(NAME)              \
  LF_CONV_TASK_T(NAME, float, f32)      \
  LF_CONV_TASK_T(NAME, double, f64)

LF_CONV_TASK(direct_forward)
LF_CONV_TASK(direct_grad_input)
LF_CONV_TASK(direct_grad_weight)
LF_CONV_TASK(flat_forward)
LF_CONV_TASK(flat_grad_input)
LF_CONV_TASK(flat_grad_weight)
LF_CONV_TASK(blocked_pack_input)
LF_CONV_TASK(blocked_pack_grad_out)
LF_CONV_TASK(blocked_forward)
LF_CONV_TASK(blocked_grad_input)
LF_CONV_TASK(blocked_grad_weight)
#undef LF_CONV_TASK
#undef LF_CONV_TASK_T

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Buffer = std::unique_ptr<T[], FreeDeleter>;

// Uninitialised, 64-byte aligned (whole vectors of the blocked layout never straddle cache lines).
template <typename T>
Buffer<T> uninit(int64_t n) {
  const std::size_t bytes = (std::max<int64_t>(n, 1) * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return Buffer<T>(static_cast<T*>(p));
}

int resolve_algo(const ConvGeometry& g, int algo) {
  if (algo == kAuto) return g.n >= kBlockedMinBatch ? kBlocked : kFlat;
  if (algo != kDirect && algo != kBlocked && algo != kFlat)
    throw std::invalid_argument("masked_conv2d: algo must be 0 (auto), 1 (direct), 2 (blocked) or 3 (flat), got " +
                                std::to_string(algo));
  return algo;
}

int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : max_threads(); }

// Threads for one call: waking a team costs microseconds (far more on a busy machine), so small
// convolutions run on the calling thread. Work counts multiply-adds plus elements copied.
constexpr int64_t kParallelMinWork = 1 << 15;
int call_threads(const ConvGeometry& g, int64_t nnz, int nt) {
  const int64_t work = g.n * (nnz * g.ohw() + g.c * g.h * g.w + g.o * g.ohw());
  return work < kParallelMinWork ? 1 : nt;
}

// Offset of every column (c, kh, kw) in a packed image (flat: its phase plane plus the tap's
// shift) or block (blocked: (c*hp*wp + tap) * B). One entry per column, so the per-call cost is
// O(k) divisions and the kept weights just look their offsets up.
template <typename T>
std::vector<int64_t> column_offsets(const Args<T>& a, bool flat) {
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  const int64_t plane = g.hp() * g.wp(), khw = g.khw();
  std::vector<int64_t> tap(khw), col_off(g.k());
  for (int64_t r = 0; r < khw; ++r)
    tap[r] = flat ? FlatLayout::phase(g, r) * f.plane + f.shift(g, r) : g.tap(r) * kLanes<T>;
  const int64_t chan = flat ? f.phases * f.plane : plane * kLanes<T>;
  for (int64_t c = 0; c < g.c; ++c)
    for (int64_t r = 0; r < khw; ++r) col_off[c * khw + r] = c * chan + tap[r];
  return col_off;
}

// CSR order: offset of each kept weight.
template <typename T>
void weight_offsets(const Args<T>& a, bool flat, int64_t nnz, std::vector<int64_t>& off) {
  const std::vector<int64_t> col_off = column_offsets(a, flat);
  off.resize(nnz);
  for (int64_t j = 0; j < nnz; ++j) off[j] = col_off[a.col_idx[j]];
}

// Blocked layout: offset of each output pixel's window origin inside one packed channel.
void pixel_offsets(const ConvGeometry& g, int64_t lanes, std::vector<int64_t>& pix) {
  const int64_t wp = g.wp();
  pix.resize(g.ohw());
  for (int64_t y = 0; y < g.oh; ++y)
    for (int64_t x = 0; x < g.ow; ++x) pix[y * g.ow + x] = (y * g.sh * wp + x * g.sw) * lanes;
}

template <typename T>
void csr_values(const Args<T>& a, int64_t nnz, std::vector<T>& wv) {
  const int64_t k = a.g.k();
  wv.resize(nnz);
  for (int64_t o = 0; o < a.g.o; ++o)
    for (int64_t j = a.row_ptr[o]; j < a.row_ptr[o + 1]; ++j) wv[j] = a.weight[o * k + a.col_idx[j]];
}

// grad_input's kept weights and their offsets in packed grad_out. Blocked: CSC order, offset of
// row o's plane. Flat: CSC entries regrouped by (c, phase of the tap), offset of row o's plane
// minus the tap's shift, with the group starts in cptr.
template <typename T>
void grad_input_pairs(const Args<T>& a, bool flat, std::vector<T>& wc, std::vector<int64_t>& cdelta,
                      std::vector<int64_t>& cptr) {
  const ConvGeometry& g = a.g;
  const FlatLayout& f = a.f;
  const int64_t k = g.k(), khw = g.khw();
  const int64_t row_stride = flat ? f.gstride : g.ohw() * kLanes<T>;
  std::vector<int64_t> shift(khw, 0);
  if (flat)
    for (int64_t r = 0; r < khw; ++r) shift[r] = f.shift(g, r);
  wc.clear();
  cdelta.clear();
  wc.reserve(a.col_ptr[k]);
  cdelta.reserve(a.col_ptr[k]);
  auto add_column = [&](int64_t c, int64_t r) {
    const int64_t col = c * khw + r;
    for (int64_t i = a.col_ptr[col]; i < a.col_ptr[col + 1]; ++i) {
      wc.push_back(a.weight[a.row_idx[i] * k + col]);
      cdelta.push_back(a.row_idx[i] * row_stride - shift[r]);
    }
  };
  if (!flat) {
    for (int64_t c = 0; c < g.c; ++c)
      for (int64_t r = 0; r < khw; ++r) add_column(c, r);
    return;
  }
  std::vector<int64_t> phase(khw);
  for (int64_t r = 0; r < khw; ++r) phase[r] = FlatLayout::phase(g, r);
  cptr.assign(1, 0);
  for (int64_t c = 0; c < g.c; ++c)
    for (int64_t ph = 0; ph < f.phases; ++ph) {
      for (int64_t r = 0; r < khw; ++r)
        if (phase[r] == ph) add_column(c, r);
      cptr.push_back(static_cast<int64_t>(wc.size()));
    }
}

template <typename T>
void forward(Args<T> a, int64_t nnz, int algo, int nt) {
  const ConvGeometry& g = a.g;
  if (g.n == 0) return;
  nt = call_threads(g, nnz, nt);
  algo = resolve_algo(g, algo);
  if (algo == kDirect) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t t = 0; t < g.n * g.o; ++t) direct_forward(a, t);
    return;
  }
  constexpr int64_t L = kLanes<T>;
  const bool flat = algo == kFlat;
  std::vector<T> wv;
  std::vector<int64_t> off, pix;
  csr_values(a, nnz, wv);
  a.wv = wv.data();
  if (flat) a.f = FlatLayout::of<T>(g);
  weight_offsets(a, flat, nnz, off);
  a.off = off.data();
  Buffer<T> xp, scratch;
  int64_t pack_tasks, tasks;
  if (flat) {
    pack_tasks = (g.n - flat_first_packed(a)) * g.c;
    xp = uninit<T>(pack_tasks * a.f.phases * a.f.plane + a.f.xslack);
    // Whole channel range per task unless that leaves threads idle.
    const int64_t ngroups = ceil_div(g.n, a.f.group);
    a.f.ogroup = ceil_div(g.o, std::min<int64_t>(g.o, ceil_div(2 * nt, ngroups)));
    a.scratch_len = a.f.ogroup * a.f.group * a.f.vout * L;
    tasks = ngroups * ceil_div(g.o, a.f.ogroup);
  } else {
    pixel_offsets(g, L, pix);
    a.pix = pix.data();
    const int64_t nblocks = ceil_div(g.n, L);
    xp = uninit<T>(nblocks * g.c * g.hp() * g.wp() * L);
    a.scratch_len = g.o * std::min(kPixPerTask, g.ohw()) * L;
    pack_tasks = nblocks * g.c;
    tasks = nblocks * ceil_div(g.ohw(), kPixPerTask);
  }
  scratch = uninit<T>(nt * a.scratch_len);
  a.xp = xp.get();
  a.scratch = scratch.get();
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < pack_tasks; ++t) {
      if (flat) flat_pack_input(a, t);
      else blocked_pack_input(a, t);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      if (flat) flat_forward(a, t);
      else blocked_forward(a, t);
    }
  }
}

// Orphaned worksharing loops of backward(): the team of the enclosing parallel region shares them.
template <typename T>
void zero_grad_weight(const Args<T>& a) {
  // Dense layout, zero where pruned; the kept entries are written after the next barrier (a packed
  // gradient is all kept entries: zeroed only for the paths that write none, an empty batch).
  const int64_t size = a.gw_packed ? a.row_ptr[a.g.o] : a.g.o * a.g.k();
#pragma omp for schedule(static) nowait
  for (int64_t i = 0; i < size; ++i) a.grad_weight[i] = T(0);
}

template <typename T>
void sum_grad_bias(const Args<T>& a, T* grad_bias) {
  const ConvGeometry& g = a.g;
  const int64_t ohw = g.ohw();
#pragma omp for schedule(static) nowait
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

template <typename T>
void backward(Args<T> a, T* grad_bias, int64_t nnz, int algo, int nt) {
  const ConvGeometry& g = a.g;
  const int64_t k = g.k(), ohw = g.ohw();
  nt = call_threads(g, nnz, nt);
  algo = resolve_algo(g, algo);
  if (g.n == 0 || (!a.grad_input && !a.grad_weight) || algo == kDirect) {
#pragma omp parallel num_threads(nt)
    {
      if (a.grad_weight) zero_grad_weight(a);
      if (grad_bias) sum_grad_bias(a, grad_bias);
    }
    if (g.n == 0 || algo != kDirect) return;
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
  constexpr int64_t L = kLanes<T>;
  const bool flat = algo == kFlat;
  const int64_t nblocks = ceil_div(g.n, L);
  if (flat) a.f = FlatLayout::of<T>(g);
  std::vector<T> wc;
  std::vector<int64_t> off, pix, cdelta, cptr;
  Buffer<T> xp, gp, scratch, partial;
  if (a.grad_input) {
    grad_input_pairs(a, flat, wc, cdelta, cptr);
    a.wc = wc.data();
    a.cdelta = cdelta.data();
    a.cptr = cptr.data();
  }
  if (a.grad_weight) {
    weight_offsets(a, flat, nnz, off);
    a.off = off.data();
  }
  const int64_t nparts = flat ? ceil_div(g.n, a.f.group_w) : nblocks * ceil_div(ohw, kPixPerPart);
  if (a.grad_weight) {
    partial = uninit<T>(nparts * nnz);
    a.partial = partial.get();
    a.nnz = nnz;
  }
  int64_t in_pack, out_pack, in_tasks;
  if (flat) {
    gp = uninit<T>(g.n * g.o * a.f.gstride);
    in_pack = (g.n - flat_first_packed(a)) * g.c;
    if (a.grad_weight) xp = uninit<T>(in_pack * a.f.phases * a.f.plane + a.f.xslack);
    a.scratch_len = a.grad_input ? a.f.group_in * a.f.phases * a.f.vin * L : 0;
    out_pack = g.n * g.o;
    in_tasks = ceil_div(g.n, a.f.group_in) * g.c;
  } else {
    pixel_offsets(g, L, pix);
    a.pix = pix.data();
    gp = uninit<T>(nblocks * g.o * ohw * L);
    if (a.grad_weight) xp = uninit<T>(nblocks * g.c * g.hp() * g.wp() * L);
    a.scratch_len = a.grad_input ? g.hp() * g.wp() * L : 0;
    in_pack = nblocks * g.c;
    out_pack = nblocks * g.o;
    in_tasks = nblocks * g.c;
  }
  scratch = uninit<T>(nt * a.scratch_len);
  a.xp = xp.get();
  a.gp = gp.get();
  a.scratch = scratch.get();
  const int64_t w_tasks = nparts * g.o;
#pragma omp parallel num_threads(nt)
  {
    if (a.grad_weight && !a.gw_packed) zero_grad_weight(a);  // packed: every entry is written below
    if (grad_bias) sum_grad_bias(a, grad_bias);
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < out_pack; ++t) {
      if (flat) flat_pack_grad_out(a, t);
      else blocked_pack_grad_out(a, t);
    }
    if (a.xp) {
#pragma omp for schedule(static) nowait
      for (int64_t t = 0; t < in_pack; ++t) {
        if (flat) flat_pack_input(a, t);
        else blocked_pack_input(a, t);
      }
    }
#pragma omp barrier
    if (a.grad_input) {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t t = 0; t < in_tasks; ++t) {
        if (flat) flat_grad_input(a, t);
        else blocked_grad_input(a, t);
      }
    }
    if (a.grad_weight) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < w_tasks; ++t) {
        if (flat) flat_grad_weight(a, t);
        else blocked_grad_weight(a, t);
      }
#pragma omp for schedule(static)
      for (int64_t o = 0; o < g.o; ++o)
        for (int64_t j = a.row_ptr[o]; j < a.row_ptr[o + 1]; ++j) {
          T s = 0;
          for (int64_t part = 0; part < nparts; ++part) s += a.partial[part * nnz + j];
          a.grad_weight[a.gw_packed ? j : o * k + a.col_idx[j]] = s;
        }
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

// Packed weights (the kept values in CSR order) spread into a dense [o, c*kh*kw] buffer, zeros
// elsewhere: the kernels address weights by (row, column) in several layouts (CSR, CSC, by phase),
// and a conv filter bank is small (O*C*KH*KW elements, tens of KB), so one scatter per call is
// cheaper than a second set of kernels.
template <typename T>
std::vector<T> unpack_weight(const ConvGeometry& g, const T* vals, const int64_t* row_ptr, const int32_t* col_idx) {
  const int64_t k = g.k();
  std::vector<T> w(static_cast<std::size_t>(g.o * k), T(0));
  for (int64_t o = 0; o < g.o; ++o)
    for (int64_t j = row_ptr[o]; j < row_ptr[o + 1]; ++j) w[o * k + col_idx[j]] = vals[j];
  return w;
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
         std::uintptr_t row_ptr, std::uintptr_t col_idx, int64_t nnz, int dtype, int algo, int num_threads,
         bool packed) {
        conv_detail::check_nnz(g, row_ptr, nnz);
        conv_detail::resolve_algo(g, algo);  // validate before releasing the GIL
        const int nt = conv_detail::resolve_threads(num_threads);
        py::gil_scoped_release release;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          auto a = conv_detail::make_args<T>(g, x, weight, row_ptr, col_idx);
          std::vector<T> dense;
          if (packed) {
            dense = conv_detail::unpack_weight(g, a.weight, a.row_ptr, a.col_idx);
            a.weight = dense.data();
          }
          a.bias = as_ptr<const T>(bias);
          a.out = as_ptr<T>(out);
          conv_detail::forward(a, nnz, algo, nt);
        });
      },
      py::arg("geometry"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("row_ptr"),
      py::arg("col_idx"), py::arg("nnz"), py::arg("dtype"), py::arg("algo") = 0, py::arg("num_threads") = 0,
      py::arg("packed") = false,
      "out[n,o,oh,ow] = bias + conv2d over the kept weights (CSR row_ptr int64 / col_idx int32 over [o, c*kh*kw]). "
      "Pointers are data pointers of contiguous CPU buffers; bias 0 means none. algo: 0 auto, 1 direct, 2 blocked, 3 flat. "
      "packed: weight holds the kept values only (nnz, CSR order) instead of the dense [o,c,kh,kw] tensor.");

  m.def(
      "masked_conv2d_backward",
      [](const ConvGeometry& g, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t grad_out,
         std::uintptr_t grad_input, std::uintptr_t grad_weight, std::uintptr_t grad_bias, std::uintptr_t row_ptr,
         std::uintptr_t col_idx, std::uintptr_t col_ptr, std::uintptr_t row_idx, int64_t nnz, int dtype, int algo,
         int num_threads, bool packed) {
        conv_detail::check_nnz(g, row_ptr, nnz);
        conv_detail::resolve_algo(g, algo);
        const int nt = conv_detail::resolve_threads(num_threads);
        py::gil_scoped_release release;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          auto a = conv_detail::make_args<T>(g, x, weight, row_ptr, col_idx);
          std::vector<T> dense;
          if (packed) {
            dense = conv_detail::unpack_weight(g, a.weight, a.row_ptr, a.col_idx);
            a.weight = dense.data();
            a.gw_packed = true;
          }
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
      py::arg("packed") = false,
      "Gradients of masked_conv2d_forward. Any of grad_input [n,c,h,w], grad_weight [o,c,kh,kw] (dense, zero where "
      "pruned) and grad_bias [o] may be 0 to skip it. Needs the CSR and the CSC of the mask. packed: weight holds the "
      "kept values (nnz, CSR order) and grad_weight is written the same way (nnz entries, nothing for pruned ones).");

  m.def(
      "masked_conv2d_algo",
      [](const ConvGeometry& g, int algo) { return conv_detail::resolve_algo(g, algo); }, py::arg("geometry"),
      py::arg("algo") = 0, "Algorithm a call with this geometry runs: 1 direct, 2 blocked, 3 flat.");
}

}  // namespace lf
