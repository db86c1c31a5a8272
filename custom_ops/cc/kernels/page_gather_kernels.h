// What the PageGather and PageGatherQuantized kernels share besides their
// input checks (page_table_checks.h): the TensorFlow names and device types
// they use (in namespace weightsep, for these two files only), the per-device
// functors' declarations, the loop over a table's pages on the CPU, the CUDA
// launchers' declarations and the staging of a switch's exclusive pages for the
// GPU. Include it before any TensorFlow or Eigen header: it defines
// EIGEN_USE_THREADS (and, with CUDA, EIGEN_USE_GPU) for the Eigen devices the
// functors run on.

#ifndef WEIGHTSEP_PAGE_GATHER_KERNELS_H_
#define WEIGHTSEP_PAGE_GATHER_KERNELS_H_

#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif
#if GOOGLE_CUDA && !defined(EIGEN_USE_GPU)
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "page_table_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"

#if GOOGLE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace weightsep {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

using CPUDevice = Eigen::ThreadPoolDevice;
#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;
#endif

// PageGather's inputs, already validated: shapes consistent, every table
// entry in [0, P + E).
struct PageGatherArgs {
  const Tensor* shared;     // [P, S] float
  const Tensor* exclusive;  // [E, S] float
  const int32_t* table;                 // [num_pages], on the host
  int64_t num_pages;
  int64_t num_weights;
};

// PageGatherQuantized's inputs, already validated likewise: rows of S int8 values.
struct PageGatherQuantizedArgs {
  const Tensor* shared;           // [P, S] int8
  const Tensor* shared_scale;     // [P] float
  const Tensor* exclusive;        // [E, S] int8
  const Tensor* exclusive_scale;  // [E] float
  const int32_t* table;                       // [num_pages], on the host
  int64_t num_pages;
  int64_t num_weights;
  int64_t page_size;  // S, weights per page
};

namespace functor {

template <typename Device>
struct PageGather {
  // Writes the gathered weights into out ([num_weights], on Device).
  void operator()(OpKernelContext* ctx, const PageGatherArgs& args,
                  Tensor* out);
};

template <typename Device>
struct PageGatherQuantized {
  // Writes the dequantized weights into out ([num_weights] float, on Device).
  void operator()(OpKernelContext* ctx, const PageGatherQuantizedArgs& args,
                  Tensor* out);
};

}  // namespace functor

// Page i of a checked table as the CPU functors copy it: row `row` of the pool
// (on_pool) or of the exclusive store, written to out[offset, offset + size),
// size being the page size except on a last page cut at num_weights.
struct PageSlot {
  int64_t index;
  bool on_pool;
  int64_t row;
  int64_t offset;
  int64_t size;
};

// Calls copy_page(PageSlot) for every page of a checked table, spread over
// TensorFlow's intra-op thread pool. A page costs about a cycle per weight
// read and written (2 * page_size in Shard's units), so small tasks stay on
// the calling thread and large ones use the pool.
template <typename CopyPage>
void ForEachPageOnCpu(OpKernelContext* ctx, const int32_t* table, int64_t num_pages,
                      int64_t num_shared, int64_t page_size, int64_t num_weights,
                      CopyPage copy_page) {
  auto pages = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e = table[i];
      const bool on_pool = e < num_shared;
      copy_page(PageSlot{i, on_pool, on_pool ? e : e - num_shared, i * page_size,
                         std::min(page_size, num_weights - i * page_size)});
    }
  };
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, num_pages,
                    /*cost_per_unit=*/2 * page_size, pages);
}

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
  Tensor buffer;
  const int32_t* table = nullptr;
  std::vector<const uint8_t*> rows;  // one per store; null when no row is used
};

// Brings a switch's exclusive pages to the GPU: the distinct exclusive rows
// the (checked) table references are numbered in table order, the table is
// renumbered to P + slot, and the table then each store's referenced rows are
// packed into one pinned buffer that one cudaMemcpyAsync on stream copies.
absl::Status StageSwitch(OpKernelContext* ctx, cudaStream_t stream,
                         const int32_t* table, int64_t num_pages, int64_t num_shared,
                         int64_t num_exclusive, const std::vector<HostRows>& stores,
                         StagedSwitch* staged);

// A GPU functor's whole work: stages the switch (StageSwitch) on ctx's
// stream, then calls launch(staged, stream), which enqueues the CUDA kernel
// and returns its launch error. A staging error fails ctx as it is; a launch
// error as "<op>: the CUDA kernel failed to launch: <why>".
template <typename Launch>
void StageAndLaunch(OpKernelContext* ctx, const char* op, const int32_t* table,
                    int64_t num_pages, int64_t num_shared, int64_t num_exclusive,
                    const std::vector<HostRows>& stores, Launch launch) {
  cudaStream_t stream = ctx->eigen_device<GPUDevice>().stream();
  StagedSwitch staged;
  OP_REQUIRES_OK(ctx, StageSwitch(ctx, stream, table, num_pages, num_shared, num_exclusive,
                                  stores, &staged));
  const cudaError_t err = launch(staged, stream);
  OP_REQUIRES(ctx, err == cudaSuccess,
              Internal(op, "the CUDA kernel failed to launch: ", cudaGetErrorString(err)));
}
#endif

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_KERNELS_H_
