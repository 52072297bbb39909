// Masked (sparse) linear layer on the CPU: y = x (W*M)^T + b and its backward, over a compressed
// index of the mask (lottery_fast/nn/sparse_index.py: CSR row_ptr/col_idx and CSC col_ptr/row_idx,
// no values). Each forward gathers the kept weights from the dense weight tensor (vals, in CSR
// order, handed back for the backward), so an optimizer step never invalidates the index; only a
// mask change does.
//
// Layout: the batch is the vector dimension. x [B, in] is transposed once per call into
// xT [in, ld] (B rounded up to 64 bytes and zero padded; the row stride ld is an odd number of
// cache lines), so every kept weight W[o, c] becomes one broadcast-FMA over the contiguous row
// xT[c, b0:b0+TB] into a block of accumulators that stays in registers. Results of a block of 16
// output rows are written back transposed into the [B, out] output straight from a small L1
// buffer, so no second full transpose is needed. When rows have enough entries, the index range
// is walked in chunks whose xT rows (for one batch tile) stay in L1 while a group of 64 output
// rows takes its entries from them.
//   forward   y[b, o]  = sum_{c in row o} W[o, c] xT[c, b]          (CSR, parallel over rows)
//   grad_x    gx[b, c] = sum_{o in col c} W[o, c] gyT[o, b]         (CSC, parallel over columns:
//                                                                   each output written once, no atomics)
//   grad_W    gW[o, c] = <gyT[o, :], xT[c, :]> at kept (o, c), 0 elsewhere (sampled dense-dense product)
//
// The register-blocked loops use GCC vector extensions whose width must match the ISA (a 64-byte
// vector on an AVX2 target is split and spilled), so each hot kernel is instantiated three times
// with its own target attribute (AVX-512, AVX2+FMA, baseline) and picked once at run time from
// cpuid (detect_isa() in common.h; LOTTERY_FAST_ISA=avx2|baseline lowers the choice, for tests).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "common.h"

// The shuffle masks are constexpr vectors wider than the baseline ISA; they never cross an ABI
// boundary (everything is inlined into the per-ISA kernels).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace py = pybind11;

namespace lf {
namespace {

using i64 = std::int64_t;
using i32 = std::int32_t;

// Output rows per block: their results are buffered and written back as 16 contiguous elements
// per batch row (one cache line for float32).
constexpr int kRowBlock = 16;
// Output rows per work item of an spmm pass (a multiple of kRowBlock): they share the L1-resident
// chunks of srcT.
constexpr int kGroupRows = 64;
// FMA chains per spmm row (each takes every other entry): with 4 accumulators per entry, one chain
// would wait on the FMA latency.
constexpr int kChains = 2;
// Padding granule of the batch dimension in bytes: the widest vector (AVX-512).
constexpr int kBatchAlignBytes = 64;

// Batch columns the kernels compute over: the batch rounded up to whole vectors of the widest ISA.
template <typename T>
i64 batch_extent(i64 batch) {
  constexpr i64 g = kBatchAlignBytes / static_cast<i64>(sizeof(T));
  return (batch + g - 1) / g * g;
}

// Row stride of the transposed buffers: the extent plus one cache line when the extent is an even
// number of lines. With a power-of-two stride (batch 256: 1 KB) the rows of an spmm chunk land
// in a quarter of L1's sets and evict each other; an odd number of lines spreads them over all
// sets (chunked forward kernel at 1024^2, batch 256, 90%, two runs each: 0.57-0.62 ms against
// 0.65-0.66 ms with the 1 KB stride).
template <typename T>
i64 padded_batch(i64 batch) {
  constexpr i64 g = kBatchAlignBytes / static_cast<i64>(sizeof(T));
  const i64 lines = (batch + g - 1) / g;
  return (lines % 2 ? lines : lines + 1) * g;
}

// ---------------------------------------------------------------------------------------------
// Arguments of the two hot kernels.

// out[b, r] = sum_{p in ptr[r]..ptr[r+1]} vals[p] * srcT[idx[p], b] (+ bias[r]), b < batch.
template <typename T>
struct SpmmArgs {
  const i64* ptr;
  const i32* idx;
  const T* vals;   // weights at the kept positions, in index order
  const T* srcT;   // [*, ld]
  i64 ld;          // row stride of srcT (padded_batch)
  const T* bias;   // [rows] or null
  T* out;          // out[b * ldo + r]
  i64 ldo;
  i64 rows;
  i64 batch;
  i64 kdim;   // index range: columns of the CSR (rows of srcT)
};

// grad_w[r, :] = 0 except grad_w[r, idx[p]] = <gyT[r, :], xT[idx[p], :]> for p in row r; packed:
// grad_w[p] = <gyT[r, :], xT[idx[p], :]>, the gradient of the kept values only, in CSR order.
template <typename T>
struct SddmmArgs {
  const i64* ptr;
  const i32* idx;
  const T* gyT;   // [rows, ld]
  const T* xT;    // [cols, ld]
  i64 ld;
  i64 n;          // batch extent (a multiple of every ISA's lane count)
  T* grad_w;      // [rows, cols]
  i64 cols;
  T* grad_b;      // [rows] or null: grad_b[r] = sum of gyT[r, :], taken while the row is in L1
  bool packed;    // grad_w is [nnz] in CSR order (nothing written for pruned positions)
};

template <typename T>
struct LaneInt;
template <>
struct LaneInt<float> { using type = std::int32_t; };
template <>
struct LaneInt<double> { using type = std::int64_t; };

template <typename T, int VB>
struct Vec {
  static constexpr int L = VB / static_cast<int>(sizeof(T));
  // Lane indices for __builtin_shuffle.
  typedef typename LaneInt<T>::type M __attribute__((vector_size(VB)));
  // Unaligned, aliasing view of VB bytes of T (rows of the transposed buffers are 64-byte
  // multiples, but the caller's base pointers need not be 64-byte aligned).
  typedef T V __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));
};

// ---------------------------------------------------------------------------------------------
// Hot loops, written once as templates over (T, vector bytes) and stamped per ISA below.

// L x L transpose in registers (L = lanes): log2(L) stages, each swapping the off-diagonal
// S x S sub-blocks of every 2S x 2S block with two-source shuffles whose lane patterns are
// compile-time constants (GCC lowers them to vpermt2ps / vshufps / unpck per ISA).
template <typename M, int L, int S, bool Upper, std::size_t... l>
constexpr M swap_mask(std::index_sequence<l...>) {
  using I = std::remove_reference_t<decltype(M{}[0])>;
  return M{static_cast<I>(Upper ? ((l & S) ? L + l : l + S) : ((l & S) ? L + l - S : l))...};
}

template <typename T, int VB, int S>
LF_INLINE void transpose_stages(typename Vec<T, VB>::V* r) {
  using M = typename Vec<T, VB>::M;
  constexpr int L = Vec<T, VB>::L;
  constexpr M lo = swap_mask<M, L, S, false>(std::make_index_sequence<L>{});
  constexpr M hi = swap_mask<M, L, S, true>(std::make_index_sequence<L>{});
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    if (!(i & S)) {
      const auto a = r[i], b = r[i + S];
      r[i] = __builtin_shuffle(a, b, lo);
      r[i + S] = __builtin_shuffle(a, b, hi);
    }
  }
  if constexpr (S > 1) transpose_stages<T, VB, S / 2>(r);
}

// dst[j, i] = src[i, j] for an L x L tile.
template <typename T, int VB>
LF_INLINE void transpose_tile(const T* src, i64 lds, T* dst, i64 ldd) {
  using V = typename Vec<T, VB>::V;
  constexpr int L = Vec<T, VB>::L;
  V r[L];
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) r[i] = *reinterpret_cast<const V*>(src + i * lds);
  if constexpr (L > 1) transpose_stages<T, VB, L / 2>(r);
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) *reinterpret_cast<V*>(dst + i * ldd) = r[i];
}

// dst[c, b] = src[b, c] over rows [b0, b1) x cols [c0, c1): whole L x L tiles in registers,
// the ragged edges element by element.
template <typename T, int VB>
LF_INLINE void transpose_region(const T* src, i64 lds, T* dst, i64 ldd, i64 b0, i64 b1, i64 c0, i64 c1) {
  constexpr int L = Vec<T, VB>::L;
  const i64 bf = b0 + (b1 - b0) / L * L;
  const i64 cf = c0 + (c1 - c0) / L * L;
  for (i64 b = b0; b < bf; b += L)
    for (i64 c = c0; c < cf; c += L) transpose_tile<T, VB>(src + b * lds + c, lds, dst + c * ldd + b, ldd);
  for (i64 b = b0; b < b1; ++b) {
    const i64 cs = b < bf ? cf : c0;  // rows of full tiles only miss their column tail
    for (i64 c = cs; c < c1; ++c) dst[c * ldd + b] = src[b * lds + c];
  }
}

// One block of the input transpose: xT[c, b] = x[b, c] for a kTransposeBlock square, zero
// padding columns [rows, ld) of xT when the block is the last one along the batch.
constexpr i64 kTransposeBlock = 64;

template <typename T, int VB>
LF_INLINE void transpose_pad_block(const T* src, T* dst, i64 rows, i64 cols, i64 ld, i64 c0, i64 b0) {
  const i64 c1 = std::min(c0 + kTransposeBlock, cols);
  const i64 b1 = std::min(b0 + kTransposeBlock, rows);
  transpose_region<T, VB>(src, cols, dst, ld, b0, b1, c0, c1);
  if (b1 == rows) {
    for (i64 c = c0; c < c1; ++c) std::fill(dst + c * ld + rows, dst + (c + 1) * ld, T(0));
  }
}

// Where one spmm block starts and ends along the index dimension: the entries of each row with
// index in [k_lo, k_hi). A single chunk (the whole range) is the common case; longer ranges are
// cut so that the srcT rows a chunk reads stay in L2, with the partial sums of every row parked
// in acc between chunks.
struct Chunk {
  i64 k_hi;
  bool first, last;
  i64* cursor;  // next entry of row r at cursor[r - row0] (all chunks but a lone one)
  i64 row0;
};

template <typename T>
struct Partial {
  T* acc;  // partial sums of row r over the current batch tile at acc[(r - row0) * tile]
  i64 tile;
  i64 row0;
};

// Row r over batch columns [b0, b0 + K*L), entries from the row's cursor up to index k_hi: K
// accumulators per chain live in registers, start from the bias (first chunk) or the parked
// partial sums, and end in dst (last chunk) or back in the parking slot. With few accumulators
// per entry, C chains take alternate entries so that consecutive FMAs into one register do not
// wait on each other's latency.
template <typename T, int VB, int K, int C>
LF_INLINE void spmm_row(const SpmmArgs<T>& a, i64 r, i64 b0, const Chunk& ch, const Partial<T>& part, T* dst) {
  using V = typename Vec<T, VB>::V;
  constexpr int L = Vec<T, VB>::L;
  T* park = part.acc ? part.acc + (r - part.row0) * part.tile : nullptr;
  V acc[C][K];
  if (ch.first) {
    const T init = a.bias ? a.bias[r] : T(0);
#pragma GCC unroll 16
    for (int v = 0; v < K; ++v) acc[0][v] = V{} + init;
  } else {
#pragma GCC unroll 16
    for (int v = 0; v < K; ++v) acc[0][v] = *reinterpret_cast<const V*>(park + v * L);
  }
#pragma GCC unroll 4
  for (int c = 1; c < C; ++c)
#pragma GCC unroll 16
    for (int v = 0; v < K; ++v) acc[c][v] = V{};
  const i64 end = a.ptr[r + 1];
  i64 p = ch.first ? a.ptr[r] : ch.cursor[r - ch.row0];
  // Locals, not a.*: GCC otherwise reloads the fields on every entry (the accumulator stores
  // go through may_alias pointers), two extra loads per entry on the busiest port.
  const i32* const idx = a.idx;
  const T* const vals = a.vals;
  const T* const src = a.srcT + b0;
  const i64 ld = a.ld, k_hi = ch.k_hi;
  // No software prefetch of the next entries' rows: it costs K load-port slots per entry, and
  // without it this loop ran 4-10% faster at 80-90% sparsity and the same at 99% (1024^2, b256).
  for (; p + C <= end && idx[p + C - 1] < k_hi; p += C) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const T w = vals[p + c];
      const T* s = src + idx[p + c] * ld;
#pragma GCC unroll 16
      for (int v = 0; v < K; ++v) acc[c][v] += w * *reinterpret_cast<const V*>(s + v * L);
    }
  }
  for (; p < end && idx[p] < k_hi; ++p) {
    const T w = vals[p];
    const T* s = src + idx[p] * ld;
#pragma GCC unroll 16
    for (int v = 0; v < K; ++v) acc[0][v] += w * *reinterpret_cast<const V*>(s + v * L);
  }
  if (!ch.last) ch.cursor[r - ch.row0] = p;
#pragma GCC unroll 4
  for (int c = 1; c < C; ++c)
#pragma GCC unroll 16
    for (int v = 0; v < K; ++v) acc[0][v] += acc[c][v];
  T* out = ch.last ? dst : park;
#pragma GCC unroll 16
  for (int v = 0; v < K; ++v) *reinterpret_cast<V*>(out + v * L) = acc[0][v];
}

// Picks the compile-time accumulator count for a (possibly short, last) batch tile.
template <typename T, int VB, int K>
LF_INLINE void spmm_row_n(int nv, const SpmmArgs<T>& a, i64 r, i64 b0, const Chunk& ch, const Partial<T>& part,
                          T* dst) {
  if constexpr (K > 1) {
    if (nv < K) {
      spmm_row_n<T, VB, K - 1>(nv, a, r, b0, ch, part, dst);
      return;
    }
  }
  spmm_row<T, VB, K, kChains>(a, r, b0, ch, part, dst);
}

// Rows [r0, r0 + kRowBlock) x the batch tile at b0 over one chunk of the index range; the last
// chunk writes the block transposed into out.
template <typename T, int VB, int NV>
LF_INLINE void spmm_block(const SpmmArgs<T>& a, i64 b0, i64 r0, const Chunk& ch, const Partial<T>& part) {
  constexpr int L = Vec<T, VB>::L;
  constexpr int TB = NV * L;
  alignas(64) T buf[kRowBlock][TB];
  const int nr = static_cast<int>(std::min<i64>(kRowBlock, a.rows - r0));
  const int nv = static_cast<int>(std::min<i64>(NV, (batch_extent<T>(a.batch) - b0) / L));
  for (int i = 0; i < nr; ++i) spmm_row_n<T, VB, NV>(nv, a, r0 + i, b0, ch, part, buf[i]);
  if (!ch.last) return;
  const i64 b1 = std::min<i64>(b0 + static_cast<i64>(nv) * L, a.batch);
  transpose_region<T, VB>(&buf[0][0], TB, a.out + b0 * a.ldo + r0, a.ldo, 0, nr, 0, b1 - b0);
}

// Rows [g0, g0 + kGroupRows) x the batch tile at b0, the index range cut into chunks of kc
// columns: the srcT rows of one chunk (kc x tile) stay in L1 while every row of the group takes
// its entries from them, and the group's partial sums wait in a buffer that stays in L1 too.
// Without the cut, each entry's srcT slice comes from L2. The gain is small: at 1024^2, batch 256,
// 90% sparsity, 2 threads, the forward pass took 0.44 ms cut into four chunks and 0.46 ms uncut
// (a standalone single-thread prototype of the loop gained ~20%; the rest of the pass, output
// transposes and partial sums, does not shrink).
template <typename T, int VB, int NV>
LF_INLINE void spmm_group(const SpmmArgs<T>& a, i64 b0, i64 g0, i64 kc) {
  constexpr i64 TB = NV * Vec<T, VB>::L;
  const i64 g1 = std::min(a.rows, g0 + kGroupRows);
  if (kc >= a.kdim) {
    const Chunk whole{a.kdim, true, true, nullptr, g0};
    const Partial<T> none{nullptr, 0, g0};
    for (i64 r0 = g0; r0 < g1; r0 += kRowBlock) spmm_block<T, VB, NV>(a, b0, r0, whole, none);
    return;
  }
  alignas(64) T park[kGroupRows * TB];
  i64 cursor[kGroupRows];
  const Partial<T> part{park, TB, g0};
  for (i64 k_lo = 0; k_lo < a.kdim; k_lo += kc) {
    const Chunk ch{std::min(k_lo + kc, a.kdim), k_lo == 0, k_lo + kc >= a.kdim, cursor, g0};
    for (i64 r0 = g0; r0 < g1; r0 += kRowBlock) spmm_block<T, VB, NV>(a, b0, r0, ch, part);
  }
}

template <typename T, int VB>
LF_INLINE T hsum(typename Vec<T, VB>::V v) {
  if constexpr (VB > 16) {
    using H = typename Vec<T, VB / 2>::V;
    H lo, hi;
    std::memcpy(&lo, &v, VB / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + VB / 2, VB / 2);
    return hsum<T, VB / 2>(lo + hi);
  } else {
    T s = T(0);
    for (int i = 0; i < Vec<T, VB>::L; ++i) s += v[i];
    return s;
  }
}

// sum of g[0, n), n a multiple of the lane count: four independent chains, then one reduction.
template <typename T, int VB>
LF_INLINE T row_sum(const T* g, i64 n) {
  using V = typename Vec<T, VB>::V;
  constexpr int L = Vec<T, VB>::L;
  V s0 = V{}, s1 = V{}, s2 = V{}, s3 = V{};
  i64 b = 0;
  for (; b + 4 * L <= n; b += 4 * L) {
    s0 += *reinterpret_cast<const V*>(g + b);
    s1 += *reinterpret_cast<const V*>(g + b + L);
    s2 += *reinterpret_cast<const V*>(g + b + 2 * L);
    s3 += *reinterpret_cast<const V*>(g + b + 3 * L);
  }
  for (; b < n; b += L) s0 += *reinterpret_cast<const V*>(g + b);
  return hsum<T, VB>((s0 + s1) + (s2 + s3));
}

// One row of grad_W over one chunk of columns (entries from the row's cursor with index below
// ch.k_hi): the first chunk zeroes the row, then each kept column gets a dot product over the
// padded batch, four at a time so each load of gyT feeds four independent FMA chains. (No
// software prefetch of the next entries' xT rows: without it this pass ran 5-25% faster at
// 80-90% sparsity, 256x256 to 4096x4096.)
template <typename T, int VB>
LF_INLINE void sddmm_row(const SddmmArgs<T>& a, i64 r, const Chunk& ch) {
  using V = typename Vec<T, VB>::V;
  constexpr int L = Vec<T, VB>::L;
  // Dense: row r of grad_w, addressed by column (zeroed first). Packed: the kept values' slots,
  // addressed by entry, so the whole gradient is nnz long and nothing else is written.
  const bool packed = a.packed;
  T* gw = packed ? a.grad_w : a.grad_w + r * a.cols;
  if (ch.first && !packed) std::memset(gw, 0, sizeof(T) * static_cast<std::size_t>(a.cols));
  const T* g = a.gyT + r * a.ld;
  const i64 n = a.n;  // multiple of L
  i64 p = ch.first ? a.ptr[r] : ch.cursor[r - ch.row0];
  i64 p1 = a.ptr[r + 1];
  if (!ch.last) p1 = std::lower_bound(a.idx + p, a.idx + p1, ch.k_hi) - a.idx;
  if (a.grad_b && ch.first) a.grad_b[r] = row_sum<T, VB>(g, n);  // padding columns are zero
  for (; p + 4 <= p1; p += 4) {
    const i64 c0 = a.idx[p], c1 = a.idx[p + 1], c2 = a.idx[p + 2], c3 = a.idx[p + 3];
    const T* x0 = a.xT + c0 * a.ld;
    const T* x1 = a.xT + c1 * a.ld;
    const T* x2 = a.xT + c2 * a.ld;
    const T* x3 = a.xT + c3 * a.ld;
    V s0 = V{}, s1 = V{}, s2 = V{}, s3 = V{};
    for (i64 b = 0; b < n; b += L) {
      const V gv = *reinterpret_cast<const V*>(g + b);
      s0 += gv * *reinterpret_cast<const V*>(x0 + b);
      s1 += gv * *reinterpret_cast<const V*>(x1 + b);
      s2 += gv * *reinterpret_cast<const V*>(x2 + b);
      s3 += gv * *reinterpret_cast<const V*>(x3 + b);
    }
    gw[packed ? p : c0] = hsum<T, VB>(s0);
    gw[packed ? p + 1 : c1] = hsum<T, VB>(s1);
    gw[packed ? p + 2 : c2] = hsum<T, VB>(s2);
    gw[packed ? p + 3 : c3] = hsum<T, VB>(s3);
  }
  for (; p < p1; ++p) {
    const i64 c = a.idx[p];
    const T* x = a.xT + c * a.ld;
    V s = V{};
    for (i64 b = 0; b < n; b += L) s += *reinterpret_cast<const V*>(g + b) * *reinterpret_cast<const V*>(x + b);
    gw[packed ? p : c] = hsum<T, VB>(s);
  }
  if (!ch.last) ch.cursor[r - ch.row0] = p;
}

// ---------------------------------------------------------------------------------------------
// Per-ISA instantiations. Vectors per spmm tile: 4, in two chains (8 accumulators + 1 broadcast
// fit the 16 registers of AVX2/SSE). A tile of 4 vectors keeps a chunk of srcT rows small
// enough for L1; 8 vectors per entry did more work per index load but read srcT from L2.

template <typename T>
struct Kernels {
  void (*spmm_group)(const SpmmArgs<T>&, i64 b0, i64 g0, i64 kc);
  void (*sddmm_row)(const SddmmArgs<T>&, i64 r, const Chunk&);
  void (*transpose_pad_block)(const T* src, T* dst, i64 rows, i64 cols, i64 ld, i64 c0, i64 b0);
  T (*row_sum)(const T* g, i64 n);
  i64 tile;  // batch columns per spmm block
};

constexpr int kAccumulators = 4;

// One set of kernels per ISA; VB is the vector width in bytes.
#define LF_LINEAR_KERNELS(NAME, TARGET, VB)                                                          \
  template <typename T>                                                                             \
  TARGET void spmm_group_##NAME(const SpmmArgs<T>& a, i64 b0, i64 g0, i64 kc) {                   \
    spmm_group<T, VB, kAccumulators>(a, b0, g0, kc);                                                \
  }                                                                                                 \
  template <typename T>                                                                             \
  TARGET void sddmm_row_##NAME(const SddmmArgs<T>& a, i64 r, const Chunk& ch) { sddmm_row<T, VB>(a, r, ch); } \
  template <typename T>                                                                             \
  TARGET void transpose_pad_##NAME(const T* src, T* dst, i64 rows, i64 cols, i64 ld, i64 c0, i64 b0) { \
    transpose_pad_block<T, VB>(src, dst, rows, cols, ld, c0, b0);                                   \
  }                                                                                                 \
  template <typename T>                                                                             \
  TARGET T row_sum_##NAME(const T* g, i64 n) { return row_sum<T, VB>(g, n); }                       \
  template <typename T>                                                                             \
  Kernels<T> kernels_##NAME() {                                                                     \
    return {&spmm_group_##NAME<T>, &sddmm_row_##NAME<T>, &transpose_pad_##NAME<T>, &row_sum_##NAME<T>, \
            kAccumulators * (VB / static_cast<i64>(sizeof(T)))};                                   \
  }

LF_LINEAR_KERNELS(base, , 16)
#ifdef LF_X86_DISPATCH
LF_LINEAR_KERNELS(avx2, LF_TARGET_AVX2, 32)
LF_LINEAR_KERNELS(avx512, LF_TARGET_AVX512, 64)
#endif
#undef LF_LINEAR_KERNELS

template <typename T>
Kernels<T> kernels() {
  switch (detect_isa()) {
#ifdef LF_X86_DISPATCH
    case Isa::Avx512: return kernels_avx512<T>();
    case Isa::Avx2: return kernels_avx2<T>();
#endif
    default: return kernels_base<T>();
  }
}

// Uninitialised per-call buffer, 64-byte aligned so the vector loads of its rows never split a
// cache line.
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Scratch = std::unique_ptr<T[], FreeDeleter>;

template <typename T>
Scratch<T> scratch(i64 n) {
  const std::size_t bytes = (static_cast<std::size_t>(std::max<i64>(n, 1)) * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return Scratch<T>(static_cast<T*>(p));
}

// ---------------------------------------------------------------------------------------------
// Drivers. Each entry point runs ONE parallel region: the phases (transposes and value gathers,
// then the kernels) are work-shared loops inside it, separated by barriers. A region per phase
// would pay a fork/join per phase and, worse, lets the first thread through a dynamic loop take
// every block while the others are still waking up (counted at 99% sparsity, 1024x1024, on the
// shared 2-core machine: in the forward's own region the second thread got none of the 128 spmm
// blocks, and the forward ran 1.17x faster on 2 threads than on one). The loops below are
// orphaned `omp for`s: they bind to the caller's region, or run serially outside one.

int team_size() {
#ifdef LF_HAVE_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Transposed copy of src [rows, cols] into dst [cols, ld], zero padded; shares the team's work.
template <typename T>
void transpose_pad_team(const Kernels<T>& k, const T* src, T* dst, i64 rows, i64 cols, i64 ld) {
  // Blocks of the batch outermost: with the static split each thread transposes the batch
  // columns whose tiles the (tile-major) spmm items handed to it first will read.
  const i64 nc = (cols + kTransposeBlock - 1) / kTransposeBlock;
  const i64 items = (rows + kTransposeBlock - 1) / kTransposeBlock * nc;
#pragma omp for schedule(static) nowait
  for (i64 it = 0; it < items; ++it) {
    k.transpose_pad_block(src, dst, rows, cols, ld, (it % nc) * kTransposeBlock, (it / nc) * kTransposeBlock);
  }
}

// Weights at the kept positions in CSR order, vals[p] = W[r, col_idx[p]] (rows are contiguous).
template <typename T>
void gather_csr_values_team(const T* w, const i64* row_ptr, const i32* col_idx, i64 rows, i64 cols, T* vals) {
#pragma omp for schedule(static) nowait
  for (i64 r = 0; r < rows; ++r) {
    const T* wr = w + r * cols;
    for (i64 p = row_ptr[r]; p < row_ptr[r + 1]; ++p) vals[p] = wr[col_idx[p]];
  }
}

// The same values in CSC order, from the CSR-ordered ones (one sequential pass instead of walking
// W down its columns, which strides by a whole row per element and, with power-of-two widths,
// lands every line in the same few cache sets). Each thread owns a range of columns and a cursor
// per column (cursor: a copy of col_ptr); CSC rows are ascending, so visiting rows in order fills
// each column's segment in order. Small indexes stay on one thread (the binary searches per row
// would cost more than they share).
template <typename T>
void csr_to_csc_values_team(const T* csr_vals, const i64* row_ptr, const i32* col_idx, i64 rows, i64 cols,
                            i64* cursor, T* vals) {
  const int n = static_cast<int>(std::min<i64>(team_size(), std::max<i64>(1, row_ptr[rows] / 16384)));
  const int t = thread_id();
  if (t >= n) return;
  const i32 c_lo = static_cast<i32>(cols * t / n), c_hi = static_cast<i32>(cols * (t + 1) / n);
  for (i64 r = 0; r < rows; ++r) {
    i64 p = row_ptr[r];
    const i64 end = row_ptr[r + 1];
    if (n > 1) p = std::lower_bound(col_idx + p, col_idx + end, c_lo) - col_idx;
    for (; p < end && col_idx[p] < c_hi; ++p) vals[cursor[col_idx[p]]++] = csr_vals[p];
  }
}

// The grad_W pass keeps only one gyT row (L1) besides the xT rows, so xT may take most of L2:
// a 1024-feature, batch-256 float32 xT (1 MB) then goes in one pass instead of two (one parallel
// region and one walk over the index fewer; -15% for that pass on a 2 MB L2).
constexpr i64 kSddmmChunkBytes = 1024 * 1024;
// grad_W rows per work item of the backward's dynamic loop.
constexpr i64 kSddmmRowsPerItem = 4;
// Bytes of srcT one spmm chunk reads per batch tile (kc rows x tile): most of a 48 KB L1, which
// the group's partial sums (kGroupRows x tile) share. 64 KB measured faster than 32 KB (fewer
// chunks, so fewer parked partial sums per entry) at 1024^2, batch 256, 90% sparsity.
constexpr i64 kSpmmChunkBytes = 64 * 1024;
// A row should bring at least this many entries to each chunk, or parking its partial sums
// costs more than the L1 hits save (at 99% sparsity a 1024-wide row has ~10 entries: no cut).
constexpr i64 kSpmmChunkEntries = 16;

// How one spmm pass is cut: work items of kGroupRows rows x one batch tile, tile-major (items
// that run at the same time read the same slice of srcT), each walking the index range in
// chunks of kc.
struct SpmmPlan {
  i64 groups, tiles, kc;
  i64 items() const { return groups * tiles; }
};

template <typename T>
SpmmPlan spmm_plan(const Kernels<T>& k, const SpmmArgs<T>& a) {
  const i64 nnz = a.ptr[a.rows] - a.ptr[0];
  const i64 l1_kc = std::max<i64>(1, kSpmmChunkBytes / (k.tile * static_cast<i64>(sizeof(T))));
  const i64 chunks = std::clamp<i64>(nnz / (a.rows * kSpmmChunkEntries), 1, (a.kdim + l1_kc - 1) / l1_kc);
  return {(a.rows + kGroupRows - 1) / kGroupRows, (batch_extent<T>(a.batch) + k.tile - 1) / k.tile,
          (a.kdim + chunks - 1) / chunks};
}

// Item `it` of an spmm pass.
template <typename T>
LF_INLINE void spmm_item(const Kernels<T>& k, const SpmmArgs<T>& a, const SpmmPlan& plan, i64 it) {
  k.spmm_group(a, (it / plan.groups) * k.tile, (it % plan.groups) * kGroupRows, plan.kc);
}

// A whole spmm pass, shared by the team. `guided` hands out large first chunks, then smaller ones
// for the tail: against dynamic,1 this cut the forward at 99% sparsity by a third on 2 threads
// (1024x1024, batch 256: 320 -> 215 us). Profiles of dynamic,1 put the time on the atomic of
// each hand-out, which (a guess) waits for the previous block's output stores to drain.
template <typename T>
void spmm_team(const Kernels<T>& k, const SpmmArgs<T>& a, const SpmmPlan& plan) {
#pragma omp for schedule(guided)
  for (i64 it = 0; it < plan.items(); ++it) spmm_item(k, a, plan, it);
}

template <typename T>
i64 sddmm_chunk_cols(const SddmmArgs<T>& a) {
  return std::max<i64>(64, kSddmmChunkBytes / (a.n * static_cast<i64>(sizeof(T))));
}

// grad_W rows [r0, r1) over one chunk.
template <typename T>
LF_INLINE void sddmm_rows(const Kernels<T>& k, const SddmmArgs<T>& a, i64 r0, i64 r1, const Chunk& ch) {
  for (i64 r = r0; r < r1; ++r) k.sddmm_row(a, r, ch);
}

// A chunked grad_W pass, shared by the team (the unchunked one joins the grad_x loop instead).
template <typename T>
void sddmm_chunked_team(const Kernels<T>& k, const SddmmArgs<T>& a, i64 rows, i64* cursor) {
  const i64 kc = sddmm_chunk_cols(a);
  for (i64 k_lo = 0; k_lo < a.cols; k_lo += kc) {
    const Chunk ch{std::min(k_lo + kc, a.cols), k_lo == 0, k_lo + kc >= a.cols, cursor, 0};
#pragma omp for schedule(dynamic, kSddmmRowsPerItem)
    for (i64 r = 0; r < rows; ++r) k.sddmm_row(a, r, ch);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points.

struct LinearShape {
  i64 batch, in, out, ld;
};

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

void check_shape(const LinearShape& s, int dtype) {
  if (s.batch < 1 || s.in < 1 || s.out < 1)
    throw std::invalid_argument("masked_linear: batch, in_features and out_features must be >= 1");
  const i64 want = dtype == 0 ? padded_batch<float>(s.batch) : padded_batch<double>(s.batch);
  if (s.ld != want)
    throw std::invalid_argument("masked_linear: padded batch " + std::to_string(s.ld) + " != expected " +
                                std::to_string(want));
}

// Below this much work (elements moved plus multiply-adds) one thread is faster than waking a team.
constexpr i64 kParallelWork = 1 << 15;

int team_for(int threads, i64 work) { return work >= kParallelWork ? threads : 1; }

template <typename T>
void forward_impl(const T* x, const T* w, const T* bias, const i64* row_ptr, const i32* col_idx,
                  const LinearShape& s, T* xT, T* vals, T* y, int threads) {
  const Kernels<T> k = kernels<T>();
  const SpmmArgs<T> a{row_ptr, col_idx, vals, xT, s.ld, bias, y, s.out, s.out, s.batch, s.in};
  const SpmmPlan plan = spmm_plan(k, a);
  const i64 work = s.batch * (s.in + s.out) + row_ptr[s.out] * s.ld;
#pragma omp parallel num_threads(team_for(threads, work))
  {
    transpose_pad_team(k, x, xT, s.batch, s.in, s.ld);
    if (w) gather_csr_values_team(w, row_ptr, col_idx, s.out, s.in, vals);  // packed: vals given
#pragma omp barrier
    spmm_team(k, a, plan);
  }
}

template <typename T>
void backward_impl(const T* gy, const T* xT, const T* vals, const i64* row_ptr, const i32* col_idx,
                   const i64* col_ptr, const i32* row_idx, const LinearShape& s, T* gx, T* gw, T* gb, int threads,
                   bool gw_packed) {
  const Kernels<T> k = kernels<T>();
  const i64 nnz = row_ptr[s.out];
  const bool dense = nnz == s.in * s.out;
  auto gyT = scratch<T>(s.out * s.ld);
  auto csc = scratch<T>(gx ? nnz : 0);
  auto csc_cursor = scratch<i64>(gx && !dense ? s.in : 0);
  if (gx && !dense) std::copy(col_ptr, col_ptr + s.in, csc_cursor.get());
  const SpmmArgs<T> ax{col_ptr, row_idx, csc.get(), gyT.get(), s.ld, nullptr, gx, s.in, s.in, s.batch, s.out};
  const SpmmPlan plan = gx ? spmm_plan(k, ax) : SpmmPlan{0, 0, 1};  // no CSC without grad_x
  // The bias gradient is the row sums of gyT: inside the grad_W pass, which reads every row anyway.
  const SddmmArgs<T> aw{row_ptr, col_idx, gyT.get(), xT, s.ld, batch_extent<T>(s.batch), gw, s.in, gb, gw_packed};
  const bool gw_whole = !gw || s.in <= sddmm_chunk_cols(aw);
  auto gw_cursor = scratch<i64>(gw_whole ? 0 : s.out);
  // grad_x items and grad_W row groups in one dynamic loop (unless grad_W is chunked), so the
  // threads balance the two passes between them with no barrier in between.
  const i64 gx_items = gx ? plan.items() : 0;
  const i64 gw_items = gw && gw_whole ? (s.out + kSddmmRowsPerItem - 1) / kSddmmRowsPerItem : 0;
  const i64 work = s.batch * (s.in + 2 * s.out) + 2 * nnz * s.ld;
#pragma omp parallel num_threads(team_for(threads, work))
  {
    transpose_pad_team(k, gy, gyT.get(), s.batch, s.out, s.ld);
    if (gx && dense) {
      transpose_pad_team(k, vals, csc.get(), s.out, s.in, s.out);  // nothing pruned: W^T
    } else if (gx) {
      csr_to_csc_values_team(vals, row_ptr, col_idx, s.out, s.in, csc_cursor.get(), csc.get());
    }
#pragma omp barrier
    const Chunk whole_w{s.in, true, true, nullptr, 0};
#pragma omp for schedule(guided)
    for (i64 it = 0; it < gw_items + gx_items; ++it) {
      if (it < gw_items) {
        sddmm_rows(k, aw, it * kSddmmRowsPerItem, std::min(s.out, (it + 1) * kSddmmRowsPerItem), whole_w);
      } else {
        spmm_item(k, ax, plan, it - gw_items);
      }
    }
    if (gw && !gw_whole) sddmm_chunked_team(k, aw, s.out, gw_cursor.get());
    if (!gw && gb) {
      const T* g = gyT.get();
#pragma omp for schedule(static)
      for (i64 r = 0; r < s.out; ++r) gb[r] = k.row_sum(g + r * s.ld, batch_extent<T>(s.batch));
    }
  }
}

int clamp_threads(int threads) { return std::max(1, threads); }

// data[i] = 0 where keep[i] is false: re-zeroing pruned weights after an optimizer step and
// masking a dense weight gradient. A plain select loop that GCC vectorises per ISA (torch's
// masked_fill_ with a bool mask runs element by element, several times slower).
template <typename T>
LF_INLINE void zero_pruned_range(T* __restrict data, const std::uint8_t* __restrict keep, i64 n) {
  for (i64 i = 0; i < n; ++i) data[i] = keep[i] ? data[i] : T(0);
}
template <typename T>
void zero_pruned_base(T* data, const std::uint8_t* keep, i64 n) { zero_pruned_range(data, keep, n); }
template <typename T>
LF_TARGET_AVX2 void zero_pruned_avx2(T* data, const std::uint8_t* keep, i64 n) { zero_pruned_range(data, keep, n); }
template <typename T>
LF_TARGET_AVX512 void zero_pruned_avx512(T* data, const std::uint8_t* keep, i64 n) { zero_pruned_range(data, keep, n); }

template <typename T>
void zero_pruned(T* data, const std::uint8_t* keep, i64 n, int threads) {
  const auto zero_range = pick_isa(&zero_pruned_base<T>, &zero_pruned_avx2<T>, &zero_pruned_avx512<T>);
  constexpr i64 kChunk = 1 << 16;
  const i64 chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
  for (i64 c = 0; c < chunks; ++c) {
    const i64 lo = c * kChunk;
    zero_range(data + lo, keep + lo, std::min(kChunk, n - lo));
  }
}

}  // namespace

void register_masked_linear(py::module_& m) {
  using std::uintptr_t;
  m.def("masked_linear_isa", &isa_name, "Instruction set the kernels dispatch to (the same for every family: see isa()).");

  m.def(
      "masked_linear_padded_batch",
      [](i64 batch, int dtype) {
        i64 r = 0;
        dispatch_float(dtype, [&](auto tag) { r = padded_batch<decltype(tag)>(batch); });
        return r;
      },
      py::arg("batch"), py::arg("dtype"),
      "Row stride of the transposed input buffer xT [in, padded] for a batch (the batch rounded up to 64 bytes, "
      "plus 64 bytes when that is an even number of cache lines).");

  m.def(
      "zero_pruned",
      [](uintptr_t data, uintptr_t keep, i64 n, int dtype, int threads) {
        require(n >= 0, "zero_pruned: n must be >= 0");
        require(n == 0 || (data && keep), "zero_pruned: null buffer");
        py::gil_scoped_release nogil;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          zero_pruned<T>(as_ptr<T>(data), as_ptr<const std::uint8_t>(keep), n, clamp_threads(threads));
        });
      },
      py::arg("data"), py::arg("keep"), py::arg("n"), py::arg("dtype"), py::arg("threads"),
      "data[i] = 0 wherever the bool buffer keep[i] is false (n elements, in place).");

  m.def(
      "masked_linear_forward",
      [](uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t row_ptr, uintptr_t col_idx, i64 batch, i64 in,
         i64 out, i64 padded, uintptr_t xT, uintptr_t vals, uintptr_t y, int dtype, int threads) {
        const LinearShape s{batch, in, out, padded};
        check_shape(s, dtype);
        require(x && weight && row_ptr && xT && y, "masked_linear_forward: null buffer");
        require((col_idx && vals) || as_ptr<const i64>(row_ptr)[out] == 0, "masked_linear_forward: null index");
        py::gil_scoped_release nogil;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          forward_impl<T>(as_ptr<const T>(x), as_ptr<const T>(weight), as_ptr<const T>(bias),
                          as_ptr<const i64>(row_ptr), as_ptr<const i32>(col_idx), s, as_ptr<T>(xT), as_ptr<T>(vals),
                          as_ptr<T>(y), clamp_threads(threads));
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("batch"),
      py::arg("in_features"), py::arg("out_features"), py::arg("padded"), py::arg("xT"), py::arg("vals"), py::arg("y"),
      py::arg("dtype"), py::arg("threads"),
      "y[B, out] = x[B, in] (W*M)^T + b over the CSR index of M. Also writes, for the backward, xT[in, padded] "
      "(x transposed, zero-padded) and vals[nnz] (the kept weights in CSR order). bias may be 0 (none). All buffers "
      "contiguous, of the given dtype.");

  m.def(
      "masked_linear_backward",
      [](uintptr_t grad_y, uintptr_t xT, uintptr_t vals, uintptr_t row_ptr, uintptr_t col_idx, uintptr_t col_ptr,
         uintptr_t row_idx, i64 batch, i64 in, i64 out, i64 padded, uintptr_t grad_x, uintptr_t grad_w, int dtype,
         int threads, uintptr_t grad_b, bool grad_w_packed) {
        const LinearShape s{batch, in, out, padded};
        check_shape(s, dtype);
        // The CSC (col_ptr, row_idx) is read for grad_x only: 0 otherwise.
        require(grad_y && row_ptr && (col_ptr || !grad_x), "masked_linear_backward: null buffer");
        const bool empty = as_ptr<const i64>(row_ptr)[out] == 0;
        require((col_idx && (row_idx || !grad_x)) || empty, "masked_linear_backward: null index");
        require(!grad_w || xT, "masked_linear_backward: grad_w needs xT");
        require(!grad_x || vals || empty, "masked_linear_backward: grad_x needs vals");
        py::gil_scoped_release nogil;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          backward_impl<T>(as_ptr<const T>(grad_y), as_ptr<const T>(xT), as_ptr<const T>(vals),
                           as_ptr<const i64>(row_ptr), as_ptr<const i32>(col_idx), as_ptr<const i64>(col_ptr),
                           as_ptr<const i32>(row_idx), s, as_ptr<T>(grad_x), as_ptr<T>(grad_w),
                           as_ptr<T>(grad_b), clamp_threads(threads), grad_w_packed);
        });
      },
      py::arg("grad_y"), py::arg("xT"), py::arg("vals"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("col_ptr"),
      py::arg("row_idx"), py::arg("batch"), py::arg("in_features"), py::arg("out_features"), py::arg("padded"),
      py::arg("grad_x"), py::arg("grad_w"), py::arg("dtype"), py::arg("threads"), py::arg("grad_b") = 0,
      py::arg("grad_w_packed") = false,
      "grad_x[B, in] (via the CSC index, if grad_x != 0; col_ptr and row_idx may be 0 otherwise), grad_w[out, in] (kept positions, zeros elsewhere, "
      "if grad_w != 0; with grad_w_packed, grad_w[nnz]: the kept positions only, in CSR order) and grad_b[out] (sum of "
      "grad_y over the batch, if grad_b != 0) of the masked linear map; xT and vals are the buffers the forward wrote "
      "(or, packed, the kept values themselves).");

  m.def(
      "masked_linear_forward_packed",
      [](uintptr_t x, uintptr_t vals, uintptr_t bias, uintptr_t row_ptr, uintptr_t col_idx, i64 batch, i64 in,
         i64 out, i64 padded, uintptr_t xT, uintptr_t y, int dtype, int threads) {
        const LinearShape s{batch, in, out, padded};
        check_shape(s, dtype);
        require(x && row_ptr && xT && y, "masked_linear_forward_packed: null buffer");
        require((col_idx && vals) || as_ptr<const i64>(row_ptr)[out] == 0, "masked_linear_forward_packed: null index");
        py::gil_scoped_release nogil;
        dispatch_float(dtype, [&](auto tag) {
          using T = decltype(tag);
          // weight null: the kernels read the kept values from vals and never write it
          forward_impl<T>(as_ptr<const T>(x), nullptr, as_ptr<const T>(bias), as_ptr<const i64>(row_ptr),
                          as_ptr<const i32>(col_idx), s, as_ptr<T>(xT), as_ptr<T>(vals), as_ptr<T>(y),
                          clamp_threads(threads));
        });
      },
      py::arg("x"), py::arg("vals"), py::arg("bias"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("batch"),
      py::arg("in_features"), py::arg("out_features"), py::arg("padded"), py::arg("xT"), py::arg("y"),
      py::arg("dtype"), py::arg("threads"),
      "y[B, out] = x[B, in] W^T + b where W holds vals[nnz] (CSR order of the index) and zeros elsewhere: the packed "
      "forward (no dense weight). Also writes xT[in, padded] for the backward; vals is read only.");
}

}  // namespace lf
