// pybind11 module `lottery_fast._core`: raw buffers in, raw buffers out.
// Each kernel family registers its own functions; this file only assembles the module.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

namespace lf {
void register_masked_linear(py::module_& m);
void register_masked_conv(py::module_& m);
void register_threshold(py::module_& m);
void register_sparse_index(py::module_& m);
void register_activation(py::module_& m);
}  // namespace lf

PYBIND11_MODULE(_core, m) {
  m.doc() = "lottery_fast compiled CPU core (no libtorch; pointers, shapes and strides in)";
  m.def("max_threads", &lf::max_threads, "Threads the core's parallel loops use.");
  m.def("isa", &lf::isa_name,
        "Instruction set every kernel family dispatches to: avx512, avx2 or baseline (LOTTERY_FAST_ISA lowers it).");
  m.def("set_num_threads", [](int n) {
#ifdef LF_HAVE_OPENMP
    if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1");
    omp_set_num_threads(n);
#endif
  }, py::arg("n"));
#ifdef LF_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  lf::register_masked_linear(m);
  lf::register_masked_conv(m);
  lf::register_threshold(m);
  lf::register_sparse_index(m);
  lf::register_activation(m);
}
