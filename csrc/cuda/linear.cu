// Masked linear on the GPU over the compressed index of the mask (see ops.h for the contracts).
//
// Both products read the dense operand transposed ([cols, batch] row-major), so the threads of a
// warp, which own consecutive batch entries, read consecutive addresses for every kept weight; the
// kept weight and its index are the same for the whole warp (one broadcast load). Work is
// proportional to nnz * batch. Each output is summed by one thread in index order: deterministic.
#include "common.cuh"

namespace lf {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Batch entries per thread in compressed_rows_matmul: each kept weight and its index are loaded
// once for this many multiply-adds (strided by the block width, so loads stay coalesced).
constexpr int kPerThread = 4;
constexpr int kRowThreads = 64;  // one block: kRowThreads * kPerThread batch entries of one row

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
compressed_rows_matmul_kernel(const std::int64_t* __restrict__ ptr, const std::int32_t* __restrict__ idx,
                              const T* __restrict__ w, std::int64_t w_sr, std::int64_t w_si,
                              const T* __restrict__ in_t, std::int64_t batch, const T* __restrict__ bias,
                              T* __restrict__ out, std::int64_t out_sb, std::int64_t out_sr) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t b0 = static_cast<std::int64_t>(blockIdx.y) * (kRowThreads * kPerThread) + threadIdx.x;
  const std::int64_t begin = ptr[r], end = ptr[r + 1];
  const T* wr = w + r * w_sr;
  bool live[kPerThread];
  T acc[kPerThread];
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    live[u] = b0 + u * kRowThreads < batch;
    acc[u] = 0;
  }
  if (live[kPerThread - 1]) {  // the whole strip is inside the batch: no bounds tests in the loop
    const T* xb = in_t + b0;
    for (std::int64_t j = begin; j < end; ++j) {
      const std::int64_t c = idx[j];
      const T v = wr[c * w_si];
      const T* xc = xb + c * batch;
#pragma unroll
      for (int u = 0; u < kPerThread; ++u) acc[u] += v * xc[u * kRowThreads];
    }
  } else {
    for (std::int64_t j = begin; j < end; ++j) {
      const std::int64_t c = idx[j];
      const T v = wr[c * w_si];
      const T* xc = in_t + c * batch + b0;
#pragma unroll
      for (int u = 0; u < kPerThread; ++u)
        if (live[u]) acc[u] += v * xc[u * kRowThreads];
    }
  }
  const T add = bias != nullptr ? bias[r] : T(0);
#pragma unroll
  for (int u = 0; u < kPerThread; ++u)
    if (live[u]) out[(b0 + u * kRowThreads) * out_sb + r * out_sr] = acc[u] + add;
}

// One warp per row r: zero the row of grad_w, then for each kept (r, c) the dot product of rows r
// of a_t and c of b_t over the batch (lanes split the batch, a shuffle reduction finishes). Row r
// of a_t stays in L1 across the row's kept entries. Writing the zeros here spares a separate fill.
template <typename T>
__global__ void sampled_matmul_kernel(const std::int64_t* __restrict__ row_ptr, const std::int32_t* __restrict__ col_idx,
                                      std::int64_t rows, std::int64_t k, const T* __restrict__ a_t,
                                      const T* __restrict__ b_t, std::int64_t batch, T* __restrict__ grad_w,
                                      T* __restrict__ row_sums) {
  const std::int64_t r = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warps leave together: r is uniform within a warp
  T* gr = grad_w + r * k;
  for (std::int64_t c = lane; c < k; c += 32) gr[c] = 0;
  __syncwarp();  // the zeros land before lane 0 writes the kept entries of the same row
  const T* ar = a_t + r * batch;
  if (row_sums != nullptr) {  // the bias gradient: the row sums of a_t (= grad_y^T), same warp
    T s = 0;
    for (std::int64_t b = lane; b < batch; b += 32) s += ar[b];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) row_sums[r] = s;
  }
  const std::int64_t end = row_ptr[r + 1];
  std::int64_t j = row_ptr[r];
  // Four kept entries at a time: four independent streams of loads in flight per lane.
  for (; j + 4 <= end; j += 4) {
    const T* b0 = b_t + static_cast<std::int64_t>(col_idx[j]) * batch;
    const T* b1 = b_t + static_cast<std::int64_t>(col_idx[j + 1]) * batch;
    const T* b2 = b_t + static_cast<std::int64_t>(col_idx[j + 2]) * batch;
    const T* b3 = b_t + static_cast<std::int64_t>(col_idx[j + 3]) * batch;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (std::int64_t b = lane; b < batch; b += 32) {
      const T a = ar[b];
      s0 += a * b0[b];
      s1 += a * b1[b];
      s2 += a * b2[b];
      s3 += a * b3[b];
    }
    for (int off = 16; off > 0; off >>= 1) {
      s0 += __shfl_down_sync(0xffffffffu, s0, off);
      s1 += __shfl_down_sync(0xffffffffu, s1, off);
      s2 += __shfl_down_sync(0xffffffffu, s2, off);
      s3 += __shfl_down_sync(0xffffffffu, s3, off);
    }
    if (lane == 0) {
      gr[col_idx[j]] = s0;
      gr[col_idx[j + 1]] = s1;
      gr[col_idx[j + 2]] = s2;
      gr[col_idx[j + 3]] = s3;
    }
  }
  for (; j < end; ++j) {
    const std::int64_t c = col_idx[j];
    const T* bc = b_t + c * batch;
    T s = 0;
    for (std::int64_t b = lane; b < batch; b += 32) s += ar[b] * bc[b];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) gr[c] = s;
  }
}

}  // namespace

void compressed_rows_matmul(ptr_t ptr, ptr_t idx, ptr_t w, std::int64_t w_sr, std::int64_t w_si, ptr_t in_t,
                            std::int64_t batch, ptr_t bias, ptr_t out, std::int64_t out_sb, std::int64_t out_sr,
                            std::int64_t rows, int dtype, ptr_t stream) {
  if (rows <= 0 || batch <= 0) return;
  if (rows > 2147483647) throw std::invalid_argument("compressed_rows_matmul: too many rows");
  const dim3 grid(static_cast<unsigned>(rows), blocks_for(batch, kRowThreads * kPerThread, 65535));
  if (batch > static_cast<std::int64_t>(grid.y) * kRowThreads * kPerThread)
    throw std::invalid_argument("compressed_rows_matmul: batch too large");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    compressed_rows_matmul_kernel<T><<<grid, kRowThreads, 0, as_stream(stream)>>>(
        dptr<const std::int64_t>(ptr), dptr<const std::int32_t>(idx), dptr<const T>(w), w_sr, w_si,
        dptr<const T>(in_t), batch, dptr<const T>(bias), dptr<T>(out), out_sb, out_sr);
  });
  check_launch("compressed_rows_matmul");
}

void sampled_matmul(ptr_t row_ptr, ptr_t col_idx, std::int64_t rows, std::int64_t k, ptr_t a_t, ptr_t b_t,
                    std::int64_t batch, ptr_t grad_w, ptr_t row_sums, int dtype, ptr_t stream) {
  if (rows <= 0) return;
  const unsigned blocks = blocks_for(rows * 32, kThreads);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    sampled_matmul_kernel<T><<<blocks, kThreads, 0, as_stream(stream)>>>(
        dptr<const std::int64_t>(row_ptr), dptr<const std::int32_t>(col_idx), rows, k, dptr<const T>(a_t),
        dptr<const T>(b_t), batch, dptr<T>(grad_w), dptr<T>(row_sums));
  });
  check_launch("sampled_matmul");
}

}  // namespace cuda
}  // namespace lf
