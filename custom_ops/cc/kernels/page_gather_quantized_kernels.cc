// PageGatherQuantized kernels: the OpKernel (validation, output) and the CPU
// and GPU functors.
//
// The checks are PageGather's (page_table_checks.h), plus the scales'
// lengths. int8 pages only: int4 states go through PageGatherQuantizedMixed
// (page_gather_mixed_kernels.cc). On the GPU the shared
// pages and their scales are device inputs (resident); the exclusive pages,
// their scales and the table are host-memory inputs, and only the referenced
// exclusive rows and their scales travel, staged as PageGather stages them.

#include "page_gather_kernels.h"  // first: it sets up Eigen's devices

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "page_table_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace weightsep {

using ::tensorflow::TensorShapeUtils;

namespace {

// Its messages' names; its stores are quantized pages, rows of B bytes.
constexpr PageOpNames kNames{"PageGatherQuantized", "B",         "quantized pages",
                             "page row size",       "page rows", "bytes"};

// The scale a page is dequantized with: a subnormal scale counts as a zero of
// its sign. TensorFlow runs CPU kernels with denormals flushed, the GPU does
// not; deciding on the bits makes every device (and the reference) agree.
float EffectiveScale(float scale) {
  uint32_t bits;
  std::memcpy(&bits, &scale, sizeof(bits));
  if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
  std::memcpy(&scale, &bits, sizeof(bits));
  return scale;
}

// Writes n weights of one page: float32(q) * scale.
void DequantizePage(const int8_t* row, float raw_scale, int64_t n, float* dst) {
  const float scale = EffectiveScale(raw_scale);
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(row[j]) * scale;
}

}  // namespace

namespace functor {

template <>
struct PageGatherQuantized<CPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherQuantizedArgs& args, Tensor* out) {
    const int64_t row_bytes = args.shared->dim_size(1);
    const int8_t* shared = args.shared->flat<int8_t>().data();
    const int8_t* exclusive = args.exclusive->flat<int8_t>().data();
    const float* shared_scale = args.shared_scale->flat<float>().data();
    const float* exclusive_scale = args.exclusive_scale->flat<float>().data();
    float* dst = out->flat<float>().data();
    ForEachPageOnCpu(ctx, args.table, args.num_pages, args.shared->dim_size(0), args.page_size,
                     args.num_weights, [&](const PageSlot& page) {
                       DequantizePage((page.on_pool ? shared : exclusive) + page.row * row_bytes,
                                      (page.on_pool ? shared_scale : exclusive_scale)[page.row],
                                      page.size, dst + page.offset);
                     });
  }
};

#if GOOGLE_CUDA
template <>
struct PageGatherQuantized<GPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherQuantizedArgs& args, Tensor* out) {
    const int64_t num_shared = args.shared->dim_size(0);
    const HostRows scales{
        reinterpret_cast<const uint8_t*>(args.exclusive_scale->flat<float>().data()),
        static_cast<int64_t>(sizeof(float))};
    const HostRows rows{static_cast<const uint8_t*>(args.exclusive->data()),
                        args.shared->dim_size(1)};
    StageAndLaunch(
        ctx, kNames.op, args.table, args.num_pages, num_shared, args.exclusive->dim_size(0),
        {scales, rows}, [&](const StagedSwitch& staged, cudaStream_t stream) {
          return LaunchPageGatherQuantized(
              static_cast<const uint8_t*>(args.shared->data()),
              args.shared_scale->flat<float>().data(), staged.rows[1],
              reinterpret_cast<const float*>(staged.rows[0]), staged.table,
              static_cast<int>(num_shared), static_cast<int>(args.page_size), args.num_pages,
              args.num_weights, /*bits=*/8, out->flat<float>().data(), stream);
        });
  }
};
#endif  // GOOGLE_CUDA

}  // namespace functor

template <typename Device, typename Tindex>
class PageGatherQuantizedOp : public OpKernel {
 public:
  explicit PageGatherQuantizedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_weights", &num_weights_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& shared = ctx->input(0);
    const Tensor& shared_scale = ctx->input(1);
    const Tensor& exclusive = ctx->input(2);
    const Tensor& exclusive_scale = ctx->input(3);
    const Tensor& table = ctx->input(4);
    OP_REQUIRES_OK(ctx, CheckPageStores(kNames, shared, exclusive, table));
    const int64_t num_shared = shared.dim_size(0);
    const int64_t num_exclusive = exclusive.dim_size(0);
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(shared_scale.shape()) &&
                         shared_scale.dim_size(0) == num_shared,
                Invalid(kNames.op, "shared_scale must hold one scale per shared page, shape [",
                        num_shared, "], but its shape is ", shared_scale.shape().DebugString(),
                        "."));
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(exclusive_scale.shape()) &&
                         exclusive_scale.dim_size(0) == num_exclusive,
                Invalid(kNames.op,
                        "exclusive_scale must hold one scale per exclusive page, shape [",
                        num_exclusive, "], but its shape is ",
                        exclusive_scale.shape().DebugString(), "."));
    const int64_t page_size = shared.dim_size(1);
    CheckedTable checked;
    OP_REQUIRES_OK(ctx, CheckPageTable<Tindex>(kNames.op, table, num_shared, num_exclusive,
                                               page_size, num_weights_, &checked));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_weights_}), &out));
    if (num_weights_ == 0) return;
    functor::PageGatherQuantized<Device>()(
        ctx,
        PageGatherQuantizedArgs{&shared, &shared_scale, &exclusive, &exclusive_scale,
                                checked.entries, checked.num_pages, num_weights_, page_size},
        out);
  }

 private:
  int64_t num_weights_ = 0;
};

#define REGISTER_CPU(Tindex)                                     \
  REGISTER_KERNEL_BUILDER(Name("PageGatherQuantized")            \
                              .Device(tensorflow::DEVICE_CPU)    \
                              .TypeConstraint<Tindex>("Tindex"), \
                          PageGatherQuantizedOp<CPUDevice, Tindex>);
REGISTER_CPU(int32_t)
REGISTER_CPU(int64_t)
#undef REGISTER_CPU

#if GOOGLE_CUDA
// As PageGather: the pool and its scales resident on the GPU; the exclusive
// pages, their scales and the table in host memory, validated and staged there.
#define REGISTER_GPU(Tindex)                                      \
  REGISTER_KERNEL_BUILDER(Name("PageGatherQuantized")             \
                              .Device(tensorflow::DEVICE_GPU)     \
                              .TypeConstraint<Tindex>("Tindex")   \
                              .HostMemory("exclusive")            \
                              .HostMemory("exclusive_scale")      \
                              .HostMemory("page_table"),          \
                          PageGatherQuantizedOp<GPUDevice, Tindex>);
REGISTER_GPU(int32_t)
REGISTER_GPU(int64_t)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace weightsep
