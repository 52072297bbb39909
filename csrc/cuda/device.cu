// What the CUDA core was built for and what the runtime sees.
#include "common.cuh"

namespace lf {
namespace cuda {

const char* compiled_archs() { return LF_CUDA_ARCHS; }

int device_count() {
  int n = 0;
  // No driver or no GPU is an answer here, not an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace lf
