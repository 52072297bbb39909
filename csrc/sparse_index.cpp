// Building the compressed index of a mask (lottery_fast/nn/sparse_index.py) in place, with no
// memory beyond the index itself: torch's nonzero() returns int64 (row, column) pairs, 16 bytes
// per kept weight before the int32 narrowing, twice over for CSR and CSC.
//
//   row_counts:  row_ptr[r + 1] - row_ptr[r] = kept entries of mask row r; returns nnz
//   fill_rows:   col_idx in CSR order; checks that every row still has the count row_counts saw
//   transpose:   col_ptr / row_idx (CSC) from the CSR, by a counting sort
//
// fill_rows re-checks the counts because another thread may write the mask between the two
// passes (the caller allocates col_idx in between): an index whose row_ptr disagrees with its
// entries would make the kernels read and write out of bounds, so a changed mask is an error,
// never a torn index. The CSC comes from the CSR, not from the mask again, for the same reason.
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace lf {
namespace {

using i64 = std::int64_t;
using i32 = std::int32_t;

void check_dims(i64 rows, i64 cols, const char* what) {
  if (rows < 0 || cols < 0) throw std::invalid_argument(std::string(what) + ": rows and cols must be >= 0");
  // Entries are int32: column indices (CSR) and row indices (CSC) must fit.
  if (rows > std::numeric_limits<i32>::max() || cols > std::numeric_limits<i32>::max())
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(rows) + " x " + std::to_string(cols) +
                                " exceeds the int32 range of the index entries");
}

i64 row_counts(const std::uint8_t* mask, i64 rows, i64 cols, i64* row_ptr, int threads) {
  row_ptr[0] = 0;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * cols >= (1 << 20))
  for (i64 r = 0; r < rows; ++r) {
    const std::uint8_t* m = mask + r * cols;
    i64 n = 0;
    for (i64 c = 0; c < cols; ++c) n += m[c] != 0;
    row_ptr[r + 1] = n;
  }
  for (i64 r = 0; r < rows; ++r) row_ptr[r + 1] += row_ptr[r];
  return row_ptr[rows];
}

void fill_rows(const std::uint8_t* mask, i64 rows, i64 cols, const i64* row_ptr, i32* col_idx, int threads) {
  std::atomic<bool> changed{false};
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * cols >= (1 << 20))
  for (i64 r = 0; r < rows; ++r) {
    const std::uint8_t* m = mask + r * cols;
    i64 p = row_ptr[r];
    const i64 end = row_ptr[r + 1];
    for (i64 c = 0; c < cols; ++c) {
      if (m[c] == 0) continue;
      if (p == end) {  // more entries than counted: stop before writing into the next row
        p = end + 1;
        break;
      }
      col_idx[p++] = static_cast<i32>(c);
    }
    if (p != end) changed.store(true, std::memory_order_relaxed);
  }
  if (changed.load())
    throw std::runtime_error("SparseIndex.from_mask: the mask changed while its index was built (written by another "
                             "thread?); change masks through the layer (set_mask) or under layer.mask_lock");
}

void transpose(const i64* row_ptr, const i32* col_idx, i64 rows, i64 cols, i64* col_ptr, i32* row_idx) {
  const i64 nnz = row_ptr[rows];
  std::fill(col_ptr, col_ptr + cols + 1, i64{0});
  for (i64 p = 0; p < nnz; ++p) {
    const i32 c = col_idx[p];
    if (c < 0 || c >= cols) throw std::invalid_argument("SparseIndex: column index out of range in the CSR");
    ++col_ptr[c + 1];
  }
  for (i64 c = 0; c < cols; ++c) col_ptr[c + 1] += col_ptr[c];
  // Rows in ascending order, so each column's rows come out ascending.
  std::vector<i64> cursor(col_ptr, col_ptr + cols);
  for (i64 r = 0; r < rows; ++r)
    for (i64 p = row_ptr[r]; p < row_ptr[r + 1]; ++p) row_idx[cursor[col_idx[p]]++] = static_cast<i32>(r);
}

}  // namespace

void register_sparse_index(py::module_& m) {
  using std::uintptr_t;
  m.def(
      "sparse_index_row_counts",
      [](uintptr_t mask, i64 rows, i64 cols, uintptr_t row_ptr, int threads) {
        check_dims(rows, cols, "sparse_index_row_counts");
        if (!row_ptr || (rows * cols > 0 && !mask)) throw std::invalid_argument("sparse_index_row_counts: null buffer");
        py::gil_scoped_release nogil;
        return row_counts(as_ptr<const std::uint8_t>(mask), rows, cols, as_ptr<i64>(row_ptr), std::max(1, threads));
      },
      py::arg("mask"), py::arg("rows"), py::arg("cols"), py::arg("row_ptr"), py::arg("threads"),
      "Writes row_ptr[rows + 1] (int64, CSR row starts) of a contiguous bool mask [rows, cols]; returns nnz.");
  m.def(
      "sparse_index_fill_rows",
      [](uintptr_t mask, i64 rows, i64 cols, uintptr_t row_ptr, uintptr_t col_idx, int threads) {
        check_dims(rows, cols, "sparse_index_fill_rows");
        if (!row_ptr || (rows * cols > 0 && !mask)) throw std::invalid_argument("sparse_index_fill_rows: null buffer");
        if (!col_idx && as_ptr<const i64>(row_ptr)[rows] > 0)
          throw std::invalid_argument("sparse_index_fill_rows: null col_idx");
        py::gil_scoped_release nogil;
        fill_rows(as_ptr<const std::uint8_t>(mask), rows, cols, as_ptr<const i64>(row_ptr), as_ptr<i32>(col_idx),
                  std::max(1, threads));
      },
      py::arg("mask"), py::arg("rows"), py::arg("cols"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("threads"),
      "Writes col_idx[nnz] (int32, ascending per row) for the row_ptr of sparse_index_row_counts; raises "
      "RuntimeError if a row's count changed since.");
  m.def(
      "sparse_index_transpose",
      [](uintptr_t row_ptr, uintptr_t col_idx, i64 rows, i64 cols, uintptr_t col_ptr, uintptr_t row_idx) {
        check_dims(rows, cols, "sparse_index_transpose");
        if (!row_ptr || !col_ptr) throw std::invalid_argument("sparse_index_transpose: null buffer");
        if ((!col_idx || !row_idx) && as_ptr<const i64>(row_ptr)[rows] > 0)
          throw std::invalid_argument("sparse_index_transpose: null index");
        py::gil_scoped_release nogil;
        transpose(as_ptr<const i64>(row_ptr), as_ptr<const i32>(col_idx), rows, cols, as_ptr<i64>(col_ptr),
                  as_ptr<i32>(row_idx));
      },
      py::arg("row_ptr"), py::arg("col_idx"), py::arg("rows"), py::arg("cols"), py::arg("col_ptr"), py::arg("row_idx"),
      "Writes the CSC col_ptr[cols + 1] (int64) and row_idx[nnz] (int32, ascending per column) of a CSR index.");
}

}  // namespace lf
