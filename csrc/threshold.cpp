// Placeholder: filled by the threshold work.
#include <pybind11/pybind11.h>
namespace py = pybind11;
namespace lf {
void register_threshold(py::module_& m) {}
}  // namespace lf
