// Placeholder: filled by the masked_conv work.
#include <pybind11/pybind11.h>
namespace py = pybind11;
namespace lf {
void register_masked_conv(py::module_& m) {}
}  // namespace lf
