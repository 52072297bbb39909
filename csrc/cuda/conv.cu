// Masked conv2d (groups = 1, NCHW) on the GPU, reading only the kept taps of the filters: an
// implicit GEMM over the compressed filter, with one thread per output (or input) pixel so that
// the threads of a warp touch neighbouring pixels of one image. No atomics anywhere: grad_x is
// gathered through the CSC index and grad_w reduced per kept tap, so results are deterministic.
#include "common.cuh"

namespace lf {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct Tap {
  std::int64_t c, ky, kx;
};
__device__ inline Tap decode(std::int64_t col, std::int64_t kh, std::int64_t kw) {
  const std::int64_t per_c = kh * kw;
  const std::int64_t c = col / per_c, rem = col - c * per_c;
  return {c, rem / kw, rem % kw};
}

// grid (o, pixel blocks): out[n, o, oy, ox] for the pixels p = (n, oy, ox) of this block.
template <typename T>
__global__ void conv_forward_kernel(ConvGeometry g, const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ bias, T* __restrict__ out,
                                    const std::int64_t* __restrict__ row_ptr, const std::int32_t* __restrict__ col_idx) {
  const std::int64_t o = blockIdx.x;
  const std::int64_t plane = g.oh * g.ow;
  const std::int64_t p = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (p >= g.n * plane) return;
  const std::int64_t n = p / plane, q = p - n * plane, oy = q / g.ow, ox = q - oy * g.ow;
  const std::int64_t k = g.c * g.kh * g.kw;
  const std::int64_t y0 = oy * g.sh - g.pt, x0 = ox * g.sw - g.pl;
  const T* xn = x + n * g.c * g.h * g.w;
  T acc = bias != nullptr ? bias[o] : T(0);
  for (std::int64_t j = row_ptr[o]; j < row_ptr[o + 1]; ++j) {
    const std::int64_t col = col_idx[j];
    const Tap t = decode(col, g.kh, g.kw);
    const std::int64_t iy = y0 + t.ky * g.dh, ix = x0 + t.kx * g.dw;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) acc += w[o * k + col] * xn[(t.c * g.h + iy) * g.w + ix];
  }
  out[(n * g.o + o) * plane + q] = acc;
}

// grid (c, pixel blocks): grad_x[n, c, iy, ix] gathered over the kept taps of input channel c
// (CSC columns c*kh*kw .. (c+1)*kh*kw - 1) and the output pixels each tap maps this pixel to.
template <typename T>
__global__ void conv_grad_input_kernel(ConvGeometry g, const T* __restrict__ gy, const T* __restrict__ w,
                                       T* __restrict__ gx, const std::int64_t* __restrict__ col_ptr,
                                       const std::int32_t* __restrict__ row_idx) {
  const std::int64_t c = blockIdx.x;
  const std::int64_t plane = g.h * g.w, oplane = g.oh * g.ow;
  const std::int64_t p = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (p >= g.n * plane) return;
  const std::int64_t n = p / plane, q = p - n * plane, iy = q / g.w, ix = q - iy * g.w;
  const std::int64_t per_c = g.kh * g.kw, k = g.c * per_c;
  const T* gyn = gy + n * g.o * oplane;
  T acc = 0;
  for (std::int64_t tap = 0; tap < per_c; ++tap) {
    const std::int64_t col = c * per_c + tap;
    const std::int64_t begin = col_ptr[col], end = col_ptr[col + 1];
    if (begin == end) continue;
    const std::int64_t ky = tap / g.kw, kx = tap - ky * g.kw;
    const std::int64_t ty = iy + g.pt - ky * g.dh, tx = ix + g.pl - kx * g.dw;
    if (ty < 0 || tx < 0 || ty % g.sh != 0 || tx % g.sw != 0) continue;
    const std::int64_t oy = ty / g.sh, ox = tx / g.sw;
    if (oy >= g.oh || ox >= g.ow) continue;
    const std::int64_t at = oy * g.ow + ox;
    for (std::int64_t j = begin; j < end; ++j) {
      const std::int64_t o = row_idx[j];
      acc += w[o * k + col] * gyn[o * oplane + at];
    }
  }
  gx[(n * g.c + c) * plane + q] = acc;
}

// One block per kept tap (CSR order): grad_w[o, col] = sum over (n, oy, ox) of gy * x.
template <typename T>
__global__ void conv_grad_weight_kernel(ConvGeometry g, const T* __restrict__ gy, const T* __restrict__ x,
                                        T* __restrict__ gw, const std::int64_t* __restrict__ row_ptr,
                                        const std::int32_t* __restrict__ col_idx) {
  const std::int64_t j = blockIdx.x;
  // the filter owning entry j: last o with row_ptr[o] <= j (binary search over o + 1 pointers)
  std::int64_t lo = 0, hi = g.o;
  while (hi - lo > 1) {
    const std::int64_t mid = (lo + hi) / 2;
    if (row_ptr[mid] <= j) lo = mid; else hi = mid;
  }
  const std::int64_t o = lo, col = col_idx[j];
  const Tap t = decode(col, g.kh, g.kw);
  const std::int64_t oplane = g.oh * g.ow, total = g.n * oplane;
  T s = 0;
  for (std::int64_t p = threadIdx.x; p < total; p += blockDim.x) {
    const std::int64_t n = p / oplane, q = p - n * oplane, oy = q / g.ow, ox = q - oy * g.ow;
    const std::int64_t iy = oy * g.sh - g.pt + t.ky * g.dh, ix = ox * g.sw - g.pl + t.kx * g.dw;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
      s += gy[(n * g.o + o) * oplane + q] * x[((n * g.c + t.c) * g.h + iy) * g.w + ix];
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  __shared__ T warp_sums[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total_sum = 0;
    for (int i = 0; i < kThreads / 32; ++i) total_sum += warp_sums[i];
    gw[o * g.c * g.kh * g.kw + col] = total_sum;
  }
}

void check_grid(const ConvGeometry& g, std::int64_t first, std::int64_t pixels, const char* what) {
  if (first > 2147483647 || (pixels + kThreads - 1) / kThreads > 65535)
    throw std::invalid_argument(std::string(what) + ": problem too large for one launch");
}

}  // namespace

void conv2d_forward(const ConvGeometry& g, ptr_t x, ptr_t w, ptr_t bias, ptr_t out, ptr_t row_ptr, ptr_t col_idx,
                    int dtype, ptr_t stream) {
  const std::int64_t pixels = g.n * g.oh * g.ow;
  if (g.o <= 0 || pixels <= 0) return;
  check_grid(g, g.o, pixels, "conv2d_forward");
  const dim3 grid(static_cast<unsigned>(g.o), blocks_for(pixels, kThreads));
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    conv_forward_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
        g, dptr<const T>(x), dptr<const T>(w), dptr<const T>(bias), dptr<T>(out),
        dptr<const std::int64_t>(row_ptr), dptr<const std::int32_t>(col_idx));
  });
  check_launch("conv2d_forward");
}

void conv2d_grad_input(const ConvGeometry& g, ptr_t grad_out, ptr_t w, ptr_t grad_x, ptr_t col_ptr, ptr_t row_idx,
                       int dtype, ptr_t stream) {
  const std::int64_t pixels = g.n * g.h * g.w;
  if (g.c <= 0 || pixels <= 0) return;
  check_grid(g, g.c, pixels, "conv2d_grad_input");
  const dim3 grid(static_cast<unsigned>(g.c), blocks_for(pixels, kThreads));
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    conv_grad_input_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
        g, dptr<const T>(grad_out), dptr<const T>(w), dptr<T>(grad_x), dptr<const std::int64_t>(col_ptr),
        dptr<const std::int32_t>(row_idx));
  });
  check_launch("conv2d_grad_input");
}

void conv2d_grad_weight(const ConvGeometry& g, ptr_t grad_out, ptr_t x, ptr_t grad_w, ptr_t row_ptr, ptr_t col_idx,
                        std::int64_t nnz, int dtype, ptr_t stream) {
  if (nnz <= 0) return;
  if (nnz > 2147483647) throw std::invalid_argument("conv2d_grad_weight: too many kept weights");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    conv_grad_weight_kernel<T><<<static_cast<unsigned>(nnz), kThreads, 0, as_stream(stream)>>>(
        g, dptr<const T>(grad_out), dptr<const T>(x), dptr<T>(grad_w), dptr<const std::int64_t>(row_ptr),
        dptr<const std::int32_t>(col_idx));
  });
  check_launch("conv2d_grad_weight");
}

}  // namespace cuda
}  // namespace lf
