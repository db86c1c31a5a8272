// PageGather kernels: the OpKernel (validation, output) and the CPU and GPU functors.
//
// Both devices check the whole page table on the host before any weight is
// read, so a bad entry is an InvalidArgument error, never a wild read. On the
// GPU the shared pool is a device input (it stays resident in GPU memory) while
// the exclusive store and the table are host-memory inputs: only the exclusive
// pages this table references travel to the device, as in a task switch.

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include "page_gather_kernels.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace weightsep {

using ::tensorflow::AllocatorAttributes;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;

using CPUDevice = Eigen::ThreadPoolDevice;
#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;
#endif

// "PageGather: " + the message, as the error the user sees.
template <typename... Args>
absl::Status Invalid(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat("PageGather: ", args...));
}
template <typename... Args>
absl::Status Internal(const Args&... args) {
  return absl::InternalError(absl::StrCat("PageGather: ", args...));
}

namespace functor {

template <>
struct PageGather<CPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherArgs& args, Tensor* out) {
    const int64_t num_shared = args.shared->dim_size(0);
    const int64_t page_size = args.shared->dim_size(1);
    const float* shared = args.shared->flat<float>().data();
    const float* exclusive = args.exclusive->flat<float>().data();
    const int32_t* table = args.table->flat<int32_t>().data();
    const int64_t num_weights = args.num_weights;
    float* dst = out->flat<float>().data();
    auto copy_pages = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t e = table[i];
        const float* src = e < num_shared ? shared + e * page_size
                                          : exclusive + (e - num_shared) * page_size;
        const int64_t n = std::min(page_size, num_weights - i * page_size);
        std::memcpy(dst + i * page_size, src, n * sizeof(float));
      }
    };
    // Cost of a page in Shard's units (about a cycle per float read and
    // written): small tasks stay on this thread, large ones use the pool.
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, args.table->NumElements(),
                      /*cost_per_unit=*/2 * page_size, copy_pages);
  }
};

#if GOOGLE_CUDA
template <>
struct PageGather<GPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherArgs& args, Tensor* out) {
    const int64_t num_shared = args.shared->dim_size(0);
    const int64_t page_size = args.shared->dim_size(1);
    const int64_t num_exclusive = args.exclusive->dim_size(0);
    const int64_t num_pages = args.table->NumElements();
    const int32_t* table = args.table->flat<int32_t>().data();
    const float* exclusive = args.exclusive->flat<float>().data();

    // Number the distinct exclusive rows the table references, in table order.
    std::vector<int32_t> slot(num_exclusive, -1);
    int64_t used = 0;
    for (int64_t i = 0; i < num_pages; ++i) {
      const int64_t e = table[i];
      if (e >= num_shared && slot[e - num_shared] < 0) slot[e - num_shared] = used++;
    }
    // One pinned staging buffer: the remapped table (rounded up to 16 bytes),
    // then the referenced exclusive rows; one copy brings both to the device.
    const int64_t table_words = (num_pages + 3) / 4 * 4;
    const int64_t words = table_words + used * page_size;
    AllocatorAttributes pinned;
    pinned.set_on_host(true);
    pinned.set_gpu_compatible(true);
    Tensor staging, device_copy;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({words}),
                                           &staging, pinned));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({words}),
                                           &device_copy));
    float* host = staging.flat<float>().data();
    int32_t* host_table = reinterpret_cast<int32_t*>(host);
    float* host_rows = host + table_words;
    std::fill(host_table + num_pages, host_table + table_words, 0);
    for (int64_t i = 0; i < num_pages; ++i) {
      const int64_t e = table[i];
      host_table[i] = e < num_shared ? e : num_shared + slot[e - num_shared];
    }
    for (int64_t r = 0; r < num_exclusive; ++r) {
      if (slot[r] >= 0)
        std::memcpy(host_rows + slot[r] * page_size, exclusive + r * page_size,
                    page_size * sizeof(float));
    }

    cudaStream_t stream = ctx->eigen_device<GPUDevice>().stream();
    float* dev = device_copy.flat<float>().data();
    cudaError_t err = cudaMemcpyAsync(dev, host, words * sizeof(float),
                                      cudaMemcpyHostToDevice, stream);
    OP_REQUIRES(ctx, err == cudaSuccess,
                Internal("copying the exclusive pages to the GPU failed: ",
                         cudaGetErrorString(err)));
    // The pinned buffer must outlive the asynchronous copy: a reference to it
    // is released by a host function queued behind the copy on the same stream.
    err = cudaLaunchHostFunc(
        stream, [](void* tensor) { delete static_cast<Tensor*>(tensor); }, new Tensor(staging));
    OP_REQUIRES(ctx, err == cudaSuccess,
                Internal("queueing the staging release failed: ", cudaGetErrorString(err)));
    err = LaunchPageGather(args.shared->flat<float>().data(), used ? dev + table_words : nullptr,
                           reinterpret_cast<const int32_t*>(dev), static_cast<int>(num_shared),
                           static_cast<int>(page_size), num_pages, args.num_weights,
                           out->flat<float>().data(), stream);
    OP_REQUIRES(ctx, err == cudaSuccess,
                Internal("the CUDA kernel failed to launch: ", cudaGetErrorString(err)));
  }
};
#endif  // GOOGLE_CUDA

}  // namespace functor

template <typename Device>
class PageGatherOp : public OpKernel {
 public:
  explicit PageGatherOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_weights", &num_weights_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& shared = ctx->input(0);
    const Tensor& exclusive = ctx->input(1);
    const Tensor& table = ctx->input(2);
    OP_REQUIRES(ctx, TensorShapeUtils::IsMatrix(shared.shape()),
                Invalid("shared must be a matrix [P, S] of weight-pages, but its shape is ",
                        shared.shape().DebugString(), "."));
    OP_REQUIRES(ctx, TensorShapeUtils::IsMatrix(exclusive.shape()),
                Invalid("exclusive must be a matrix [E, S] of weight-pages (E may be 0), but its "
                        "shape is ", exclusive.shape().DebugString(), "."));
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(table.shape()),
                Invalid("page_table must be a vector, but its shape is ",
                        table.shape().DebugString(), "."));
    const int64_t num_shared = shared.dim_size(0);
    const int64_t page_size = shared.dim_size(1);
    const int64_t num_exclusive = exclusive.dim_size(0);
    OP_REQUIRES(ctx, page_size > 0,
                Invalid("the page size (shared.shape[1]) must be positive, but it is 0."));
    OP_REQUIRES(ctx, exclusive.dim_size(1) == page_size,
                Invalid("exclusive pages hold ", exclusive.dim_size(1),
                        " weights but shared pages hold ", page_size,
                        "; both stores must use the same page size."));
    OP_REQUIRES(ctx, num_shared + num_exclusive <= std::numeric_limits<int32_t>::max(),
                Invalid(num_shared, " shared + ", num_exclusive,
                        " exclusive pages do not fit int32 page-table entries."));
    const int64_t num_pages = table.dim_size(0);
    const int64_t needed = (num_weights_ + page_size - 1) / page_size;
    OP_REQUIRES(ctx, num_pages == needed,
                Invalid("page_table has ", num_pages, " entries but num_weights = ", num_weights_,
                        " with page size ", page_size, " needs ceil(", num_weights_, " / ",
                        page_size, ") = ", needed, " pages."));
    const int32_t* entries = table.flat<int32_t>().data();
    const int64_t num_rows = num_shared + num_exclusive;
    for (int64_t i = 0; i < num_pages; ++i) {
      OP_REQUIRES(ctx, entries[i] >= 0 && entries[i] < num_rows,
                  Invalid("page_table[", i, "] = ", entries[i], " is out of range [0, ", num_rows,
                          "): there are ", num_shared, " shared and ", num_exclusive,
                          " exclusive pages."));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_weights_}), &out));
    if (num_weights_ == 0) return;
    functor::PageGather<Device>()(ctx, PageGatherArgs{&shared, &exclusive, &table, num_weights_},
                                  out);
  }

 private:
  int64_t num_weights_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("PageGather").Device(tensorflow::DEVICE_CPU),
                        PageGatherOp<CPUDevice>);

#if GOOGLE_CUDA
// The pool is resident on the GPU; the exclusive store and the table stay in
// host memory (level 2) and are validated and staged there.
REGISTER_KERNEL_BUILDER(Name("PageGather")
                            .Device(tensorflow::DEVICE_GPU)
                            .HostMemory("exclusive")
                            .HostMemory("page_table"),
                        PageGatherOp<GPUDevice>);
#endif  // GOOGLE_CUDA

}  // namespace weightsep
