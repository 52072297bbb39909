// pybind11 module `lottery_fast._cuda`: device pointers, shapes and a stream handle in; no libtorch.
// Built only when a CUDA toolkit is found (CMake option LOTTERY_FAST_CUDA); the kernels live in
// the .cu files beside this one, behind the plain C++ interface of ops.h.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "ops.h"

namespace py = pybind11;
using lf::cuda::ptr_t;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lottery_fast compiled CUDA core (raw device pointers and a cudaStream_t handle in)";
  m.def("compiled_archs", &lf::cuda::compiled_archs);
  m.def("device_count", &lf::cuda::device_count, "CUDA devices the runtime sees (0 without driver or GPU).");

  m.def("compressed_rows_matmul", &lf::cuda::compressed_rows_matmul, py::arg("ptr"), py::arg("idx"), py::arg("w"),
        py::arg("w_sr"), py::arg("w_si"), py::arg("in_t"), py::arg("batch"), py::arg("bias"), py::arg("out"),
        py::arg("out_sb"), py::arg("out_sr"), py::arg("rows"), py::arg("dtype"), py::arg("stream"),
        "out[b*out_sb + r*out_sr] = bias[r] + sum_j w[r*w_sr + idx[j]*w_si] * in_t[idx[j]*batch + b].");
  m.def("sampled_matmul", &lf::cuda::sampled_matmul, py::arg("row_ptr"), py::arg("col_idx"), py::arg("rows"),
        py::arg("k"), py::arg("a_t"), py::arg("b_t"), py::arg("batch"), py::arg("grad_w"), py::arg("row_sums"),
        py::arg("dtype"), py::arg("stream"),
        "grad_w[r*k + c] = <a_t[r, :], b_t[c, :]> at the kept (r, c) of a CSR index, zeros elsewhere;\n"
        "row_sums[r] = sum(a_t[r, :]) unless row_sums is 0.");

  py::class_<lf::cuda::ConvGeometry>(m, "ConvGeometry")
      .def(py::init([](std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, std::int64_t o,
                       std::int64_t kh, std::int64_t kw, std::int64_t oh, std::int64_t ow, std::int64_t sh,
                       std::int64_t sw, std::int64_t pt, std::int64_t pl, std::int64_t dh, std::int64_t dw) {
        return lf::cuda::ConvGeometry{n, c, h, w, o, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw};
      }))
      .def_readonly("n", &lf::cuda::ConvGeometry::n)
      .def_readonly("o", &lf::cuda::ConvGeometry::o)
      .def_readonly("oh", &lf::cuda::ConvGeometry::oh)
      .def_readonly("ow", &lf::cuda::ConvGeometry::ow);
  m.def("conv2d_forward", &lf::cuda::conv2d_forward);
  m.def("conv2d_grad_input", &lf::cuda::conv2d_grad_input);
  m.def("conv2d_grad_weight", &lf::cuda::conv2d_grad_weight);

  m.def("threshold_workspace_words", &lf::cuda::threshold_workspace_words, py::arg("numels"));
  m.def(
      "prune_smallest_",
      [](const std::vector<ptr_t>& weights, const std::vector<ptr_t>& masks, const std::vector<std::int64_t>& numels,
         const std::vector<int>& dtypes, std::int64_t k, const std::vector<std::string>& names, ptr_t workspace,
         ptr_t stream) {
        const std::size_t n = weights.size();
        if (masks.size() != n || numels.size() != n || dtypes.size() != n || names.size() != n)
          throw std::invalid_argument("prune_smallest_: weights, masks, numels, dtypes and names must have equal lengths");
        std::vector<lf::cuda::DeviceTensorRef> ts(n);
        for (std::size_t i = 0; i < n; ++i) ts[i] = {weights[i], masks[i], numels[i], dtypes[i]};
        lf::cuda::ThresholdResult r;
        {
          py::gil_scoped_release release;
          r = lf::cuda::prune_smallest(ts, k, workspace, stream);
        }
        // Same wording as the CPU core's errors, formatted by Python: a std::ostream insertion of a
        // double crashed inside this module on the H100 machine (libstdc++ locale facets).
        using R = lf::cuda::ThresholdResult;
        if (r.error == R::kOk) return py::make_tuple(r.threshold, r.pruned);
        py::str msg;
        if (r.error == R::kNonFinite)
          msg = py::str("prune_smallest: {} has a non-finite weight ({}) at kept flat index {}")
                    .format(names[r.error_tensor], r.error_value, r.error_index);
        else if (r.error == R::kTooMany)
          msg = py::str("prune_smallest: k={} is more than the {} kept weights").format(k, r.error_index);
        else if (r.error == R::kBadTensor)
          msg = py::str("prune_smallest: {} has an unsupported dtype, a negative numel or a null data pointer")
                    .format(names[r.error_tensor]);
        else
          msg = py::str("prune_smallest: k={} is negative").format(k);
        throw py::value_error(msg.cast<std::string>());
      },
      py::arg("weights"), py::arg("masks"), py::arg("numels"), py::arg("dtypes"), py::arg("k"), py::arg("names"),
      py::arg("workspace"), py::arg("stream"),
      "GPU twin of _core.prune_smallest_: returns (threshold, pruned_per_tensor); synchronises the stream.");
}
