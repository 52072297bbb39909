// Shared helpers of the CUDA core: error checks, stream casts, dtype dispatch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops.h"

namespace lf {
namespace cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("lottery_fast CUDA: ") + what + ": " + cudaGetErrorString(err));
}
// After a launch: catches bad configurations at once (asynchronous faults surface at the next sync).
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

inline cudaStream_t as_stream(ptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
template <typename T>
inline T* dptr(ptr_t p) { return reinterpret_cast<T*>(p); }

template <typename F>
inline void dispatch_float(int dtype, F&& f) {
  if (dtype == 0) f(float{});
  else if (dtype == 1) f(double{});
  else throw std::invalid_argument("lottery_fast CUDA: unsupported dtype code " + std::to_string(dtype));
}

inline unsigned blocks_for(std::int64_t n, int threads, std::int64_t cap = 1 << 30) {
  std::int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < cap ? b : cap);
}

}  // namespace cuda
}  // namespace lf
