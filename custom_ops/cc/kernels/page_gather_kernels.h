// What the PageGather and PageGatherQuantized kernels share: the page-table
// check, the per-device functors' declarations, the CUDA launchers'
// declarations and the staging of a switch's exclusive pages for the GPU.

#ifndef WEIGHTSEP_PAGE_GATHER_KERNELS_H_
#define WEIGHTSEP_PAGE_GATHER_KERNELS_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

#if GOOGLE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace weightsep {

// Checks a page table of Tindex (int32 or int64) entries in the table's own
// type, before any narrowing: n_p == ceil(num_weights / page_size) and every
// entry in [0, num_shared + num_exclusive). On success *entries points at the
// entries as int32: the table's own data for int32, else *narrowed.
template <typename Tindex>
absl::Status CheckPageTable(const char* op, const tensorflow::Tensor& table, int64_t num_shared,
                            int64_t num_exclusive, int64_t page_size, int64_t num_weights,
                            std::vector<int32_t>* narrowed, const int32_t** entries) {
  const int64_t num_rows = num_shared + num_exclusive;
  if (num_rows > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", num_shared, " shared + ", num_exclusive,
        " exclusive pages do not fit int32 page-table entries."));
  }
  const int64_t num_pages = table.dim_size(0);
  const int64_t needed = (num_weights + page_size - 1) / page_size;
  if (num_pages != needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": page_table has ", num_pages, " entries but num_weights = ", num_weights,
        " with page size ", page_size, " needs ceil(", num_weights, " / ", page_size, ") = ",
        needed, " pages."));
  }
  const Tindex* raw = table.flat<Tindex>().data();
  for (int64_t i = 0; i < num_pages; ++i) {
    const int64_t e = static_cast<int64_t>(raw[i]);
    if (e < 0 || e >= num_rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": page_table[", i, "] = ", e, " is out of range [0, ", num_rows, "): there are ",
          num_shared, " shared and ", num_exclusive, " exclusive pages."));
    }
  }
  if constexpr (sizeof(Tindex) == sizeof(int32_t)) {
    *entries = reinterpret_cast<const int32_t*>(raw);
  } else {
    narrowed->assign(raw, raw + num_pages);  // every entry is below 2^31 here
    *entries = narrowed->data();
  }
  return absl::OkStatus();
}

// PageGather's inputs, already validated: shapes consistent, every table
// entry in [0, P + E).
struct PageGatherArgs {
  const tensorflow::Tensor* shared;     // [P, S] float
  const tensorflow::Tensor* exclusive;  // [E, S] float
  const int32_t* table;                 // [num_pages], on the host
  int64_t num_pages;
  int64_t num_weights;
};

// PageGatherQuantized's inputs, already validated likewise. Rows are bytes:
// int8 values (bits 8, S per row) or int4 pairs (bits 4, S / 2 per row).
struct PageGatherQuantizedArgs {
  const tensorflow::Tensor* shared;           // [P, B] int8 or uint8
  const tensorflow::Tensor* shared_scale;     // [P] float
  const tensorflow::Tensor* exclusive;        // [E, B]
  const tensorflow::Tensor* exclusive_scale;  // [E] float
  const int32_t* table;                       // [num_pages], on the host
  int64_t num_pages;
  int64_t num_weights;
  int64_t page_size;  // S, weights per page
  int bits;           // 4 or 8
};

namespace functor {

template <typename Device>
struct PageGather {
  // Writes the gathered weights into out ([num_weights], on Device).
  void operator()(tensorflow::OpKernelContext* ctx, const PageGatherArgs& args,
                  tensorflow::Tensor* out);
};

template <typename Device>
struct PageGatherQuantized {
  // Writes the dequantized weights into out ([num_weights] float, on Device).
  void operator()(tensorflow::OpKernelContext* ctx, const PageGatherQuantizedArgs& args,
                  tensorflow::Tensor* out);
};

}  // namespace functor

#if GOOGLE_CUDA
// The CUDA launchers in page_gather.cu and page_gather_quantized.cu; all
// pointers on the device, the table already checked.
cudaError_t LaunchPageGather(const float* shared, const float* exclusive, const int32_t* table,
                             int num_shared, int page_size, int64_t num_pages,
                             int64_t num_weights, float* out, cudaStream_t stream);
cudaError_t LaunchPageGatherQuantized(const uint8_t* shared, const float* shared_scale,
                                      const uint8_t* exclusive, const float* exclusive_scale,
                                      const int32_t* table, int num_shared, int page_size,
                                      int64_t num_pages, int64_t num_weights, int bits,
                                      float* out, cudaStream_t stream);

// One host-resident store of exclusive rows (rows of row_bytes bytes each).
struct HostRows {
  const uint8_t* data;
  int64_t row_bytes;
};

// The device side of a staged switch: the renumbered table and, per store,
// the referenced rows in slot order; valid while *buffer lives.
struct StagedSwitch {
  tensorflow::Tensor buffer;
  const int32_t* table = nullptr;
  std::vector<const uint8_t*> rows;  // one per store; null when no row is used
};

// Brings a switch's exclusive pages to the GPU: the distinct exclusive rows
// the (checked) table references are numbered in table order, the table is
// renumbered to P + slot, and the table then each store's referenced rows are
// packed into one pinned buffer that one cudaMemcpyAsync on stream copies.
absl::Status StageSwitch(tensorflow::OpKernelContext* ctx, cudaStream_t stream,
                         const int32_t* table, int64_t num_pages, int64_t num_shared,
                         int64_t num_exclusive, const std::vector<HostRows>& stores,
                         StagedSwitch* staged);
#endif

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_KERNELS_H_
