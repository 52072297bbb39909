// Host entry points of the CUDA core (lottery_fast._cuda). Plain C++: the pybind11 bindings
// (bindings.cpp, host compiler) call these, and the .cu files implement them. Every pointer is a
// device address passed as an integer; `stream` is a cudaStream_t as an integer (torch's
// torch.cuda.current_stream().cuda_stream), and every kernel runs on it, so the calls order with
// torch's own work and can be captured in CUDA graphs. Errors throw std::runtime_error (CUDA) or
// std::invalid_argument (bad arguments).
#pragma once

#include <cstdint>
#include <vector>

namespace lf {
namespace cuda {

using ptr_t = std::uintptr_t;

// No std::string crosses between the .cu files and the bindings: nvcc's host pass and the C++
// compiler may disagree on its ABI (e.g. a _GLIBCXX_USE_CXX11_ABI in CXXFLAGS only).
// Compiled for (sm list) and the device count the runtime sees (0 without a driver/GPU).
const char* compiled_archs();
int device_count();

// --- masked linear over compressed rows --------------------------------------------------------
// out[b * out_sb + r * out_sr] = bias[r] + sum_{j in [ptr[r], ptr[r+1])} w[r * w_sr + idx[j] * w_si] * in_t[idx[j] * batch + b]
// for r < rows, b < batch. in_t is a [cols, batch] row-major matrix (the transposed dense operand).
// With a CSR index (w_sr = k, w_si = 1) this is the forward y = x (W*M)^T + b (in_t = x^T); with
// the CSC index (w_sr = 1, w_si = k) it is grad_x = grad_y (W*M) (in_t = grad_y^T). bias may be 0.
void compressed_rows_matmul(ptr_t ptr, ptr_t idx, ptr_t w, std::int64_t w_sr, std::int64_t w_si,
                            ptr_t in_t, std::int64_t batch, ptr_t bias, ptr_t out, std::int64_t out_sb,
                            std::int64_t out_sr, std::int64_t rows, int dtype, ptr_t stream);

// Sampled dense-dense product at the kept positions of a CSR index over [rows, k]:
// grad_w[r * k + c] = sum_b a_t[r * batch + b] * b_t[c * batch + b] for every kept (r, c);
// every other entry of grad_w (an [rows, k] buffer) is set to zero. With row_sums != 0 it also
// writes row_sums[r] = sum_b a_t[r * batch + b] (the bias gradient when a_t = grad_y^T).
void sampled_matmul(ptr_t row_ptr, ptr_t col_idx, std::int64_t rows, std::int64_t k, ptr_t a_t, ptr_t b_t,
                    std::int64_t batch, ptr_t grad_w, ptr_t row_sums, int dtype, ptr_t stream);

// --- masked conv2d (groups = 1), NCHW contiguous ---------------------------------------------
struct ConvGeometry {
  std::int64_t n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw;
};
// out[n, o, :, :] = bias[o] + sum over the kept taps of filter o (CSR over [o, c*kh*kw]).
void conv2d_forward(const ConvGeometry& g, ptr_t x, ptr_t w, ptr_t bias, ptr_t out, ptr_t row_ptr,
                    ptr_t col_idx, int dtype, ptr_t stream);
// grad_x from the CSC index (gathers, no atomics: deterministic).
void conv2d_grad_input(const ConvGeometry& g, ptr_t grad_out, ptr_t w, ptr_t grad_x, ptr_t col_ptr,
                       ptr_t row_idx, int dtype, ptr_t stream);
// grad_w at the kept taps only (other entries untouched: the caller zero-fills).
void conv2d_grad_weight(const ConvGeometry& g, ptr_t grad_out, ptr_t x, ptr_t grad_w, ptr_t row_ptr,
                        ptr_t col_idx, std::int64_t nnz, int dtype, ptr_t stream);

// --- fused global top-k magnitude selection -----------------------------------------------------
struct DeviceTensorRef {
  ptr_t weight;  // float32/float64, contiguous, numel elements
  ptr_t mask;    // uint8 (torch.bool), contiguous
  std::int64_t numel;
  int dtype;
};
struct ThresholdResult {
  double threshold;
  std::vector<std::int64_t> pruned;
  // Rejected input, returned (the binding words the error with the tensors' names); masks are
  // untouched then. kNonFinite: tensor error_tensor holds error_value at kept flat index
  // error_index; kTooMany: k exceeds the error_index kept weights; kBadTensor: tensor
  // error_tensor has an unknown dtype, negative numel or null pointer; kNegativeK.
  enum Error { kOk = 0, kNonFinite, kTooMany, kBadTensor, kNegativeK };
  Error error = kOk;
  std::int64_t error_tensor = -1, error_index = -1;
  double error_value = 0.0;
};
// Same contract and result as the CPU lf::prune_smallest: prune exactly k kept entries with the
// smallest |w|, ties by (tensor order, flat index). CUDA failures throw std::runtime_error. `workspace` is a
// device buffer of at least threshold_workspace_words(numels) 8-byte words. Synchronises the stream.
std::int64_t threshold_workspace_words(const std::vector<std::int64_t>& numels);
ThresholdResult prune_smallest(const std::vector<DeviceTensorRef>& tensors, std::int64_t k, ptr_t workspace,
                               ptr_t stream);

}  // namespace cuda
}  // namespace lf
