// Masked conv2d (groups = 1, NCHW) on the GPU, reading only the kept taps of the filters: an
// implicit GEMM over the compressed filter, with one thread per output (or input) pixel so that
// the threads of a warp touch neighbouring pixels of one image. No atomics anywhere: grad_x is
// gathered through the CSC index and grad_w reduced per kept tap, so results are deterministic.
#include "common.cuh"

namespace lf {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The geometry in the kernels' index type: 32-bit arithmetic (divisions above all) is several
// times cheaper than 64-bit, and every offset fits in it unless a tensor has 2^31 elements.
template <typename I>
struct Geo {
  I n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw;
  explicit Geo(const ConvGeometry& g)
      : n(I(g.n)), c(I(g.c)), h(I(g.h)), w(I(g.w)), o(I(g.o)), kh(I(g.kh)), kw(I(g.kw)), oh(I(g.oh)), ow(I(g.ow)),
        sh(I(g.sh)), sw(I(g.sw)), pt(I(g.pt)), pl(I(g.pl)), dh(I(g.dh)), dw(I(g.dw)) {}
};

// grid (o, pixel blocks): out[n, o, oy, ox] for the pixels p = (n, oy, ox) of this block.
template <typename T, typename I>
__global__ void conv_forward_kernel(Geo<I> g, const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ bias, T* __restrict__ out,
                                    const std::int64_t* __restrict__ row_ptr, const std::int32_t* __restrict__ col_idx) {
  const I o = blockIdx.x;
  const I plane = g.oh * g.ow;
  const I p = static_cast<I>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (p >= g.n * plane) return;
  const I n = p / plane, q = p - n * plane, oy = q / g.ow, ox = q - oy * g.ow;
  const I per_c = g.kh * g.kw, k = g.c * per_c;
  const I y0 = oy * g.sh - g.pt, x0 = ox * g.sw - g.pl;
  const T* xn = x + n * g.c * g.h * g.w;
  const T* wo = w + o * k;
  T acc = bias != nullptr ? bias[o] : T(0);
  const I end = static_cast<I>(row_ptr[o + 1]);
  for (I j = static_cast<I>(row_ptr[o]); j < end; ++j) {
    const I col = col_idx[j];
    const I c = col / per_c, rem = col - c * per_c, ky = rem / g.kw, kx = rem - ky * g.kw;
    const I iy = y0 + ky * g.dh, ix = x0 + kx * g.dw;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) acc += wo[col] * xn[(c * g.h + iy) * g.w + ix];
  }
  out[(n * g.o + o) * plane + q] = acc;
}

// grid (c, pixel blocks): grad_x[n, c, iy, ix] gathered over the kept taps of input channel c
// (CSC columns c*kh*kw .. (c+1)*kh*kw - 1) and the output pixels each tap maps this pixel to.
template <typename T, typename I>
__global__ void conv_grad_input_kernel(Geo<I> g, const T* __restrict__ gy, const T* __restrict__ w,
                                       T* __restrict__ gx, const std::int64_t* __restrict__ col_ptr,
                                       const std::int32_t* __restrict__ row_idx) {
  const I c = blockIdx.x;
  const I plane = g.h * g.w, oplane = g.oh * g.ow;
  const I p = static_cast<I>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (p >= g.n * plane) return;
  const I n = p / plane, q = p - n * plane, iy = q / g.w, ix = q - iy * g.w;
  const I per_c = g.kh * g.kw, k = g.c * per_c;
  const T* gyn = gy + n * g.o * oplane;
  T acc = 0;
  for (I tap = 0; tap < per_c; ++tap) {
    const I col = c * per_c + tap;
    const I begin = static_cast<I>(col_ptr[col]), end = static_cast<I>(col_ptr[col + 1]);
    if (begin == end) continue;
    const I ky = tap / g.kw, kx = tap - ky * g.kw;
    const I ty = iy + g.pt - ky * g.dh, tx = ix + g.pl - kx * g.dw;
    if (ty < 0 || tx < 0) continue;
    const I oy = ty / g.sh, ox = tx / g.sw;
    if (oy * g.sh != ty || ox * g.sw != tx || oy >= g.oh || ox >= g.ow) continue;
    const I at = oy * g.ow + ox;
    for (I j = begin; j < end; ++j) {
      const I o = row_idx[j];
      acc += w[o * k + col] * gyn[o * oplane + at];
    }
  }
  gx[(n * g.c + c) * plane + q] = acc;
}

// One block per kept tap (CSR order): grad_w[o, col] = sum over (n, oy, ox) of gy * x. Threads
// walk the output pixels image by image, so no division per pixel beyond the row split.
template <typename T, typename I>
__global__ void conv_grad_weight_kernel(Geo<I> g, const T* __restrict__ gy, const T* __restrict__ x,
                                        T* __restrict__ gw, const std::int64_t* __restrict__ row_ptr,
                                        const std::int32_t* __restrict__ col_idx) {
  const std::int64_t j = blockIdx.x;
  // the filter owning entry j: last o with row_ptr[o] <= j (binary search over o + 1 pointers)
  I lo = 0, hi = g.o;
  while (hi - lo > 1) {
    const I mid = (lo + hi) / 2;
    if (row_ptr[mid] <= j) lo = mid; else hi = mid;
  }
  const I o = lo, col = col_idx[j];
  const I per_c = g.kh * g.kw;
  const I c = col / per_c, rem = col - c * per_c, ky = rem / g.kw, kx = rem - ky * g.kw;
  const I oplane = g.oh * g.ow;
  T s = 0;
  for (I n = 0; n < g.n; ++n) {
    const T* gyn = gy + (n * g.o + o) * oplane;
    const T* xn = x + (n * g.c + c) * g.h * g.w;
    for (I q = threadIdx.x; q < oplane; q += blockDim.x) {
      const I oy = q / g.ow, ox = q - oy * g.ow;
      const I iy = oy * g.sh - g.pt + ky * g.dh, ix = ox * g.sw - g.pl + kx * g.dw;
      if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) s += gyn[q] * xn[iy * g.w + ix];
    }
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  __shared__ T warp_sums[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total_sum = 0;
    for (int i = 0; i < kThreads / 32; ++i) total_sum += warp_sums[i];
    gw[static_cast<std::int64_t>(o) * g.c * per_c + col] = total_sum;
  }
}

bool fits_int32(const ConvGeometry& g) {
  const std::int64_t lim = 2147483647;
  return g.n * g.c * g.h * g.w < lim && g.n * g.o * g.oh * g.ow < lim && g.o * g.c * g.kh * g.kw < lim;
}

// Calls f(int{}) or f(std::int64_t{}): the index type the geometry fits.
template <typename F>
void dispatch_index(const ConvGeometry& g, F&& f) {
  if (fits_int32(g)) f(int{});
  else f(std::int64_t{});
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
    dispatch_index(g, [&](auto index) {
      using I = decltype(index);
      conv_forward_kernel<T, I><<<grid, kThreads, 0, as_stream(stream)>>>(
          Geo<I>(g), dptr<const T>(x), dptr<const T>(w), dptr<const T>(bias), dptr<T>(out),
          dptr<const std::int64_t>(row_ptr), dptr<const std::int32_t>(col_idx));
    });
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
    dispatch_index(g, [&](auto index) {
      using I = decltype(index);
      conv_grad_input_kernel<T, I><<<grid, kThreads, 0, as_stream(stream)>>>(
          Geo<I>(g), dptr<const T>(grad_out), dptr<const T>(w), dptr<T>(grad_x), dptr<const std::int64_t>(col_ptr),
          dptr<const std::int32_t>(row_idx));
    });
  });
  check_launch("conv2d_grad_input");
}

void conv2d_grad_weight(const ConvGeometry& g, ptr_t grad_out, ptr_t x, ptr_t grad_w, ptr_t row_ptr, ptr_t col_idx,
                        std::int64_t nnz, int dtype, ptr_t stream) {
  if (nnz <= 0) return;
  if (nnz > 2147483647) throw std::invalid_argument("conv2d_grad_weight: too many kept weights");
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    dispatch_index(g, [&](auto index) {
      using I = decltype(index);
      conv_grad_weight_kernel<T, I><<<static_cast<unsigned>(nnz), kThreads, 0, as_stream(stream)>>>(
          Geo<I>(g), dptr<const T>(grad_out), dptr<const T>(x), dptr<T>(grad_w), dptr<const std::int64_t>(row_ptr),
          dptr<const std::int32_t>(col_idx));
    });
  });
  check_launch("conv2d_grad_weight");
}

}  // namespace cuda
}  // namespace lf
