// PageGatherQuantized kernels: the OpKernel (validation, output) and the CPU
// and GPU functors.
//
// The checks are PageGather's (page_table_checks.h), plus the scales'
// lengths and the pairing of bits with the page dtype. On the GPU the shared
// pages and their scales are device inputs (resident); the exclusive pages,
// their scales and the table are host-memory inputs, and only the referenced
// exclusive rows and their scales travel, staged as PageGather stages them.

#include "page_gather_kernels.h"  // first: it sets up Eigen's devices

#include <cstdint>
#include <cstring>
#include <type_traits>
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

// Writes n weights of one page: float32(q) * scale. A nibble is a 4-bit
// two's-complement number: shifting it to the top of an int8 and back
// sign-extends it.
void DequantizePage(const uint8_t* row, float raw_scale, int bits, int64_t n, float* dst) {
  const float scale = EffectiveScale(raw_scale);
  if (bits == 8) {
    for (int64_t j = 0; j < n; ++j)
      dst[j] = static_cast<float>(static_cast<int8_t>(row[j])) * scale;
    return;
  }
  const int64_t pairs = n / 2;
  for (int64_t k = 0; k < pairs; ++k) {
    const uint8_t b = row[k];
    dst[2 * k] = static_cast<float>(static_cast<int8_t>(b << 4) >> 4) * scale;
    dst[2 * k + 1] = static_cast<float>(static_cast<int8_t>(b) >> 4) * scale;
  }
  if (n % 2) dst[n - 1] = static_cast<float>(static_cast<int8_t>(row[pairs] << 4) >> 4) * scale;
}

}  // namespace

namespace functor {

template <>
struct PageGatherQuantized<CPUDevice> {
  void operator()(OpKernelContext* ctx, const PageGatherQuantizedArgs& args, Tensor* out) {
    const int64_t row_bytes = args.shared->dim_size(1);
    const uint8_t* shared = static_cast<const uint8_t*>(args.shared->data());
    const uint8_t* exclusive = static_cast<const uint8_t*>(args.exclusive->data());
    const float* shared_scale = args.shared_scale->flat<float>().data();
    const float* exclusive_scale = args.exclusive_scale->flat<float>().data();
    float* dst = out->flat<float>().data();
    ForEachPageOnCpu(ctx, args.table, args.num_pages, args.shared->dim_size(0), args.page_size,
                     args.num_weights, [&](const PageSlot& page) {
                       DequantizePage((page.on_pool ? shared : exclusive) + page.row * row_bytes,
                                      (page.on_pool ? shared_scale : exclusive_scale)[page.row],
                                      args.bits, page.size, dst + page.offset);
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
              args.num_weights, args.bits, out->flat<float>().data(), stream);
        });
  }
};
#endif  // GOOGLE_CUDA

}  // namespace functor

template <typename Device, typename T, typename Tindex>
class PageGatherQuantizedOp : public OpKernel {
 public:
  explicit PageGatherQuantizedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_weights", &num_weights_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    // int8 values for bits 8, packed int4 bytes (uint8) for bits 4: one dtype per layout.
    const int want = sizeof(T) == 1 && std::is_signed<T>::value ? 8 : 4;
    OP_REQUIRES(ctx, bits_ == want,
                Invalid(kNames.op,
                        "bits must be 8 with int8 pages or 4 with uint8 (packed int4) pages, got "
                        "bits = ", bits_, " with ", want == 8 ? "int8" : "uint8", " pages."));
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
    const int64_t row_bytes = shared.dim_size(1);
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
    const int64_t page_size = bits_ == 8 ? row_bytes : 2 * row_bytes;
    CheckedTable checked;
    OP_REQUIRES_OK(ctx, CheckPageTable<Tindex>(kNames.op, table, num_shared, num_exclusive,
                                               page_size, num_weights_, &checked));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_weights_}), &out));
    if (num_weights_ == 0) return;
    functor::PageGatherQuantized<Device>()(
        ctx,
        PageGatherQuantizedArgs{&shared, &shared_scale, &exclusive, &exclusive_scale,
                                checked.entries, checked.num_pages, num_weights_, page_size,
                                bits_},
        out);
  }

 private:
  int64_t num_weights_ = 0;
  int bits_ = 0;
};

#define REGISTER_CPU(T, Tindex)                                  \
  REGISTER_KERNEL_BUILDER(Name("PageGatherQuantized")            \
                              .Device(tensorflow::DEVICE_CPU)    \
                              .TypeConstraint<T>("T")            \
                              .TypeConstraint<Tindex>("Tindex"), \
                          PageGatherQuantizedOp<CPUDevice, T, Tindex>);
REGISTER_CPU(int8_t, int32_t)
REGISTER_CPU(int8_t, int64_t)
REGISTER_CPU(uint8_t, int32_t)
REGISTER_CPU(uint8_t, int64_t)
#undef REGISTER_CPU

#if GOOGLE_CUDA
// As PageGather: the pool and its scales resident on the GPU; the exclusive
// pages, their scales and the table in host memory, validated and staged there.
#define REGISTER_GPU(T, Tindex)                                   \
  REGISTER_KERNEL_BUILDER(Name("PageGatherQuantized")             \
                              .Device(tensorflow::DEVICE_GPU)     \
                              .TypeConstraint<T>("T")             \
                              .TypeConstraint<Tindex>("Tindex")   \
                              .HostMemory("exclusive")            \
                              .HostMemory("exclusive_scale")      \
                              .HostMemory("page_table"),          \
                          PageGatherQuantizedOp<GPUDevice, T, Tindex>);
REGISTER_GPU(int8_t, int32_t)
REGISTER_GPU(int8_t, int64_t)
REGISTER_GPU(uint8_t, int32_t)
REGISTER_GPU(uint8_t, int64_t)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace weightsep
