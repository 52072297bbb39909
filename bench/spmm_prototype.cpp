// Standalone single-thread prototype of the forward spmm loop, outside the library, to bound what
// the batch-vectorised kernel can reach on this CPU (README "Benchmarks", issue #2). 1024x1024
// mask at the given density (uniform random), batch 256, float32, AVX-512:
//   A: whole rows, 8 vectors of batch per entry, xT [1024][256] read from L2 (the old library loop);
//   B: xT stored per 64-wide batch tile, the index reordered chunk-major (256 columns per chunk),
//      so a chunk's xT rows (64 KB) stay in L1; partial sums parked per row between chunks.
//
//   g++ -O3 -march=native -o /tmp/spmm_prototype bench/spmm_prototype.cpp && /tmp/spmm_prototype 0.1
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

typedef float V __attribute__((vector_size(64), aligned(4), may_alias));
using i64 = std::int64_t;
using i32 = std::int32_t;
constexpr int IN = 1024, OUT = 1024, B = 256, TB = 64, KC = 256;

__attribute__((noinline)) void kernel_a(const i64* ptr, const i32* idx, const float* vals, const float* xT, float* yT) {
  for (int b0 = 0; b0 < B; b0 += 128)
    for (int r = 0; r < OUT; ++r) {
      V acc[8] = {};
      for (i64 p = ptr[r]; p < ptr[r + 1]; ++p) {
        const float w = vals[p];
        const float* s = xT + i64{idx[p]} * B + b0;
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) acc[v] += w * *(const V*)(s + 16 * v);
      }
      for (int v = 0; v < 8; ++v) *(V*)(yT + i64{r} * B + b0 + 16 * v) = acc[v];
    }
}

// bptr[k * OUT + r] .. bptr[k * OUT + r + 1]: entries of row r in chunk k; off: offsets in a tile.
__attribute__((noinline)) void kernel_b(const i64* bptr, const i32* off, const float* vals, const float* xt,
                                        float* park, float* yT) {
  for (int t = 0; t < B / TB; ++t) {
    const float* tile = xt + i64{t} * IN * TB;
    for (int k = 0; k < IN / KC; ++k) {
      const i64* bp = bptr + i64{k} * OUT;
      const bool first = k == 0, last = k == IN / KC - 1;
      for (int r = 0; r < OUT; ++r) {
        V acc[4];
        for (int v = 0; v < 4; ++v) acc[v] = first ? V{} : *(const V*)(park + r * TB + 16 * v);
        for (i64 p = bp[r]; p < bp[r + 1]; ++p) {
          const float w = vals[p];
          const float* s = tile + off[p];
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) acc[v] += w * *(const V*)(s + 16 * v);
        }
        float* o = last ? yT + i64{r} * B + t * TB : park + r * TB;
        for (int v = 0; v < 4; ++v) *(V*)(o + 16 * v) = acc[v];
      }
    }
  }
}

template <typename F>
double best_ms(F f) {
  double best = 1e9;
  for (int i = 0; i < 50; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * 1e3;
}

int main(int argc, char** argv) {
  const double density = argc > 1 ? std::atof(argv[1]) : 0.1;
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<i64> ptr(OUT + 1, 0);
  std::vector<i32> idx;
  std::vector<float> vals;
  for (int r = 0; r < OUT; ++r) {
    for (int c = 0; c < IN; ++c)
      if (u(gen) < density) {
        idx.push_back(c);
        vals.push_back(u(gen) - 0.5f);
      }
    ptr[r + 1] = static_cast<i64>(idx.size());
  }
  std::vector<i64> bptr(i64{IN / KC} * OUT + 1);
  std::vector<i32> off;
  std::vector<float> bvals;
  for (int k = 0; k < IN / KC; ++k)
    for (int r = 0; r < OUT; ++r) {
      bptr[i64{k} * OUT + r] = static_cast<i64>(off.size());
      for (i64 p = ptr[r]; p < ptr[r + 1]; ++p)
        if (idx[p] / KC == k) {
          off.push_back(idx[p] * TB);
          bvals.push_back(vals[p]);
        }
    }
  bptr.back() = static_cast<i64>(off.size());
  auto buf = [](i64 n) { return static_cast<float*>(std::aligned_alloc(64, 4 * n)); };
  float *xT = buf(i64{IN} * B), *xt = buf(i64{IN} * B), *park = buf(i64{OUT} * TB);
  float *ya = buf(i64{OUT} * B), *yb = buf(i64{OUT} * B);
  for (i64 i = 0; i < i64{IN} * B; ++i) xT[i] = u(gen);
  for (int t = 0; t < B / TB; ++t)
    for (int c = 0; c < IN; ++c)
      for (int j = 0; j < TB; ++j) xt[(i64{t} * IN + c) * TB + j] = xT[i64{c} * B + t * TB + j];
  const double ms_a = best_ms([&] { kernel_a(ptr.data(), idx.data(), vals.data(), xT, ya); });
  const double ms_b = best_ms([&] { kernel_b(bptr.data(), off.data(), bvals.data(), xt, park, yb); });
  double err = 0;
  for (i64 i = 0; i < i64{OUT} * B; ++i) err = std::max(err, double(std::fabs(ya[i] - yb[i])));
  const double fmas = double(idx.size()) * B / 16;  // 16-wide vector FMAs per pass
  std::printf("density %.3f, %zu kept, %.2f M vector FMAs (max |A-B| %.1e)\n", density, idx.size(), fmas / 1e6, err);
  std::printf("A (L2, whole rows): %.3f ms, %.2f G vector FMA/s\n", ms_a, fmas / ms_a / 1e6);
  std::printf("B (L1 chunks):      %.3f ms, %.2f G vector FMA/s\n", ms_b, fmas / ms_b / 1e6);
}
