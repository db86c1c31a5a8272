// PageGather kernels: the OpKernel (validation, output) and the CPU and GPU
// functors, and the staging of a switch's exclusive pages that the GPU kernels
// of PageGather and PageGatherQuantized share.
//
// Both devices check the whole page table on the host before any weight is
// read, so a bad entry is an InvalidArgument error, never a wild read. On the
// GPU the shared pool is a device input (it stays resident in GPU memory) while
// the exclusive store and the table are host-memory inputs: only the exclusive
// pages this table references travel to the device, as in a task switch.

#include "page_gather_kernels.h"  // first: it sets up Eigen's devices

#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "page_table_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace weightsep {

using ::tensorflow::AllocatorAttributes;

namespace {

// Its messages' names; its stores are float32 weight-pages, rows of S weights.
constexpr PageOpNames kNames{"PageGather", "S",     "weight-pages",
                             "page size",  "pages", "weights"};

}  // namespace

namespace functor {

template <>
struct PageGather<CPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherArgs& args, Tensor* out) {
    const int64_t page_size = args.shared->dim_size(1);
    const float* shared = args.shared->flat<float>().data();
    const float* exclusive = args.exclusive->flat<float>().data();
    float* dst = out->flat<float>().data();
    ForEachPageOnCpu(ctx, args.table, args.num_pages, args.shared->dim_size(0), page_size,
                     args.num_weights, [&](const PageSlot& page) {
                       std::memcpy(dst + page.offset,
                                   (page.on_pool ? shared : exclusive) + page.row * page_size,
                                   page.size * sizeof(float));
                     });
  }
};

#if GOOGLE_CUDA
template <>
struct PageGather<GPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherArgs& args, Tensor* out) {
    const int64_t num_shared = args.shared->dim_size(0);
    const int64_t page_size = args.shared->dim_size(1);
    const HostRows rows{reinterpret_cast<const uint8_t*>(args.exclusive->flat<float>().data()),
                        page_size * static_cast<int64_t>(sizeof(float))};
    StageAndLaunch(
        ctx, kNames.op, args.table, args.num_pages, num_shared, args.exclusive->dim_size(0),
        {rows}, [&](const StagedSwitch& staged, cudaStream_t stream) {
          return LaunchPageGather(args.shared->flat<float>().data(),
                                  reinterpret_cast<const float*>(staged.rows[0]), staged.table,
                                  static_cast<int>(num_shared), static_cast<int>(page_size),
                                  args.num_pages, args.num_weights, out->flat<float>().data(),
                                  stream);
        });
  }
};
#endif  // GOOGLE_CUDA

}  // namespace functor

#if GOOGLE_CUDA
absl::Status StageSwitch(OpKernelContext* ctx, cudaStream_t stream, const int32_t* table,
                         int64_t num_pages, int64_t num_shared, int64_t num_exclusive,
                         const std::vector<HostRows>& stores, StagedSwitch* staged) {
  // Number the distinct exclusive rows the table references, in table order.
  std::vector<int32_t> slot(num_exclusive, -1);
  int64_t used = 0;
  for (int64_t i = 0; i < num_pages; ++i) {
    const int64_t e = table[i];
    if (e >= num_shared && slot[e - num_shared] < 0) slot[e - num_shared] = used++;
  }
  // Each block starts on 16 bytes, so that the kernels' vector paths apply.
  auto round16 = [](int64_t bytes) { return (bytes + 15) / 16 * 16; };
  std::vector<int64_t> offsets;
  int64_t total = round16(num_pages * static_cast<int64_t>(sizeof(int32_t)));
  for (const HostRows& store : stores) {
    offsets.push_back(total);
    total += round16(used * store.row_bytes);
  }
  AllocatorAttributes pinned;
  pinned.set_on_host(true);
  pinned.set_gpu_compatible(true);
  Tensor staging;
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(tensorflow::DT_UINT8, TensorShape({total}), &staging, pinned));
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(tensorflow::DT_UINT8, TensorShape({total}), &staged->buffer));
  uint8_t* host = staging.flat<uint8_t>().data();
  int32_t* host_table = reinterpret_cast<int32_t*>(host);
  for (int64_t i = 0; i < num_pages; ++i) {
    const int64_t e = table[i];
    host_table[i] = static_cast<int32_t>(e < num_shared ? e : num_shared + slot[e - num_shared]);
  }
  for (size_t k = 0; k < stores.size(); ++k) {
    const int64_t row_bytes = stores[k].row_bytes;
    for (int64_t r = 0; r < num_exclusive; ++r) {
      if (slot[r] >= 0)
        std::memcpy(host + offsets[k] + slot[r] * row_bytes, stores[k].data + r * row_bytes,
                    row_bytes);
    }
  }
  uint8_t* dev = staged->buffer.flat<uint8_t>().data();
  cudaError_t err = cudaMemcpyAsync(dev, host, total, cudaMemcpyHostToDevice, stream);
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat(
        "copying the exclusive pages to the GPU failed: ", cudaGetErrorString(err)));
  }
  // The pinned buffer must outlive the asynchronous copy: a reference to it
  // is released by a host function queued behind the copy on the same stream.
  err = cudaLaunchHostFunc(
      stream, [](void* tensor) { delete static_cast<Tensor*>(tensor); }, new Tensor(staging));
  if (err != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("queueing the staging release failed: ", cudaGetErrorString(err)));
  }
  staged->table = reinterpret_cast<const int32_t*>(dev);
  staged->rows.clear();
  for (int64_t offset : offsets) staged->rows.push_back(used ? dev + offset : nullptr);
  return absl::OkStatus();
}
#endif  // GOOGLE_CUDA

template <typename Device, typename Tindex>
class PageGatherOp : public OpKernel {
 public:
  explicit PageGatherOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_weights", &num_weights_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& shared = ctx->input(0);
    const Tensor& exclusive = ctx->input(1);
    const Tensor& table = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckPageStores(kNames, shared, exclusive, table));
    CheckedTable checked;
    OP_REQUIRES_OK(ctx, CheckPageTable<Tindex>(kNames.op, table, shared.dim_size(0),
                                               exclusive.dim_size(0), shared.dim_size(1),
                                               num_weights_, &checked));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_weights_}), &out));
    if (num_weights_ == 0) return;
    functor::PageGather<Device>()(
        ctx, PageGatherArgs{&shared, &exclusive, checked.entries, checked.num_pages, num_weights_},
        out);
  }

 private:
  int64_t num_weights_ = 0;
};

#define REGISTER_CPU(Tindex)                                                               \
  REGISTER_KERNEL_BUILDER(                                                                 \
      Name("PageGather").Device(tensorflow::DEVICE_CPU).TypeConstraint<Tindex>("Tindex"), \
      PageGatherOp<CPUDevice, Tindex>);
REGISTER_CPU(int32_t)
REGISTER_CPU(int64_t)
#undef REGISTER_CPU

#if GOOGLE_CUDA
// The pool is resident on the GPU; the exclusive store and the table stay in
// host memory (level 2) and are validated and staged there.
#define REGISTER_GPU(Tindex)                                         \
  REGISTER_KERNEL_BUILDER(Name("PageGather")                         \
                              .Device(tensorflow::DEVICE_GPU)        \
                              .TypeConstraint<Tindex>("Tindex")      \
                              .HostMemory("exclusive")               \
                              .HostMemory("page_table"),             \
                          PageGatherOp<GPUDevice, Tindex>);
REGISTER_GPU(int32_t)
REGISTER_GPU(int64_t)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace weightsep
