// The checks PageGather and PageGatherQuantized make on their inputs before
// any weight is read, and the error helpers their messages go through. The
// page-count message is also the shape functions' (../ops/page_gather_shape.h),
// so a wrong table length reads the same at graph construction and at run time.

#ifndef WEIGHTSEP_PAGE_TABLE_CHECKS_H_
#define WEIGHTSEP_PAGE_TABLE_CHECKS_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace weightsep {

// op + ": " + the message, as the InvalidArgument error the user sees.
template <typename... Args>
absl::Status Invalid(const char* op, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", args...));
}

// op + ": " + the message, as an Internal error (a CUDA call that failed).
template <typename... Args>
absl::Status Internal(const char* op, const Args&... args) {
  return absl::InternalError(absl::StrCat(op, ": ", args...));
}

// ceil(num_weights / page_size): the page-table length a task needs.
inline int64_t PagesFor(int64_t num_weights, int64_t page_size) {
  return (num_weights + page_size - 1) / page_size;
}

// The error for a table of num_pages entries that is not PagesFor(num_weights, page_size).
inline absl::Status PageCountError(const char* op, int64_t num_pages, int64_t num_weights,
                                   int64_t page_size) {
  return Invalid(op, "page_table has ", num_pages, " entries but num_weights = ", num_weights,
                 " with page size ", page_size, " needs ceil(", num_weights, " / ", page_size,
                 ") = ", PagesFor(num_weights, page_size), " pages.");
}

// How an op's messages name it and its page stores: PageGather's rows are S
// weights of float32 weight-pages, PageGatherQuantized's B bytes of quantized
// pages.
struct PageOpNames {
  const char* op;        // the op, every message's prefix
  const char* row_dim;   // "S" or "B", the row length in [P, S]
  const char* pages;     // "weight-pages" or "quantized pages"
  const char* row_size;  // "page size" or "page row size"
  const char* rows;      // "pages" or "page rows"
  const char* unit;      // "weights" or "bytes"
};

// shared [P, R] and exclusive [E, R] matrices (E may be 0) with the same
// positive row length R, and a vector page_table; checked in that order.
inline absl::Status CheckPageStores(const PageOpNames& names, const tensorflow::Tensor& shared,
                                    const tensorflow::Tensor& exclusive,
                                    const tensorflow::Tensor& table) {
  using ::tensorflow::TensorShapeUtils;
  if (!TensorShapeUtils::IsMatrix(shared.shape())) {
    return Invalid(names.op, "shared must be a matrix [P, ", names.row_dim, "] of ", names.pages,
                   ", but its shape is ", shared.shape().DebugString(), ".");
  }
  if (!TensorShapeUtils::IsMatrix(exclusive.shape())) {
    return Invalid(names.op, "exclusive must be a matrix [E, ", names.row_dim, "] of ", names.pages,
                   " (E may be 0), but its shape is ", exclusive.shape().DebugString(), ".");
  }
  if (!TensorShapeUtils::IsVector(table.shape())) {
    return Invalid(names.op, "page_table must be a vector, but its shape is ",
                   table.shape().DebugString(), ".");
  }
  const int64_t row = shared.dim_size(1);
  if (row <= 0) {
    return Invalid(names.op, "the ", names.row_size,
                   " (shared.shape[1]) must be positive, but it is 0.");
  }
  if (exclusive.dim_size(1) != row) {
    return Invalid(names.op, "exclusive ", names.rows, " hold ", exclusive.dim_size(1), " ",
                   names.unit, " but shared ", names.rows, " hold ", row,
                   "; both stores must use the same page size.");
  }
  return absl::OkStatus();
}

// A page table that passed CheckPageTable, as int32 entries: the table's own
// data for an int32 table, else `narrowed`, a copy of the int64 entries.
struct CheckedTable {
  const int32_t* entries = nullptr;
  int64_t num_pages = 0;
  std::vector<int32_t> narrowed;
};

// Checks a page table of Tindex (int32 or int64) entries in the table's own
// type, before any narrowing: the P + E rows fit int32 entries,
// n_p == ceil(num_weights / page_size), and every entry lies in
// [0, num_shared + num_exclusive).
template <typename Tindex>
absl::Status CheckPageTable(const char* op, const tensorflow::Tensor& table, int64_t num_shared,
                            int64_t num_exclusive, int64_t page_size, int64_t num_weights,
                            CheckedTable* checked) {
  const int64_t num_rows = num_shared + num_exclusive;
  if (num_rows > std::numeric_limits<int32_t>::max()) {
    return Invalid(op, num_shared, " shared + ", num_exclusive,
                   " exclusive pages do not fit int32 page-table entries.");
  }
  const int64_t num_pages = table.dim_size(0);
  if (num_pages != PagesFor(num_weights, page_size)) {
    return PageCountError(op, num_pages, num_weights, page_size);
  }
  const Tindex* raw = table.flat<Tindex>().data();
  for (int64_t i = 0; i < num_pages; ++i) {
    const int64_t e = static_cast<int64_t>(raw[i]);
    if (e < 0 || e >= num_rows) {
      return Invalid(op, "page_table[", i, "] = ", e, " is out of range [0, ", num_rows,
                     "): there are ", num_shared, " shared and ", num_exclusive,
                     " exclusive pages.");
    }
  }
  checked->num_pages = num_pages;
  if constexpr (sizeof(Tindex) == sizeof(int32_t)) {
    checked->entries = reinterpret_cast<const int32_t*>(raw);
  } else {
    checked->narrowed.assign(raw, raw + num_pages);  // every entry is below 2^31 here
    checked->entries = checked->narrowed.data();
  }
  return absl::OkStatus();
}

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_TABLE_CHECKS_H_
