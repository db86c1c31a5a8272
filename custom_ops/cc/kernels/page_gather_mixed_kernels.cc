// PageGatherQuantizedMixed CPU kernel: validation and decode of mixed int4 /
// int8 pages with float16 group scales (the encoding in the op's registration).
//
// Every input is checked before any weight is written: the stores' shapes, the
// kinds (4 or 8), the count of int8 pages against the wide rows, the scales
// (finite, not negative) and the page table (PageGather's checks). The float16
// scales are converted by their bits, so the result does not depend on the
// CPU's half-precision instructions or its denormal mode.

#include "page_gather_kernels.h"  // first: it sets up Eigen's devices

#include <cmath>
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

constexpr const char* kOp = "PageGatherQuantizedMixed";
constexpr PageOpNames kNames{kOp, "S / 2", "packed int4 pages", "page row size", "page rows",
                             "bytes"};

// IEEE binary16 bits -> float32, exactly (subnormal halves become normal floats).
float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1Fu) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: shift the mantissa up to a leading 1
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// One store: its tensors as pointers, and each page's row in `wide` (-1: int4).
struct MixedStore {
  const uint8_t* values;
  const uint16_t* scales;
  const uint8_t* wide;
  std::vector<int64_t> wide_row;
};

absl::Status CheckStore(const char* name, const Tensor& values, const Tensor& scales,
                        const Tensor& wide, const Tensor& bits, int64_t row_bytes,
                        int64_t* groups, MixedStore* store) {
  const int64_t rows = values.dim_size(0);
  if (!TensorShapeUtils::IsMatrix(scales.shape()) || scales.dim_size(0) != rows ||
      scales.dim_size(1) <= 0 || (2 * row_bytes) % scales.dim_size(1) != 0) {
    return Invalid(kOp, name, "_scale must be [", rows, ", S / G] with G dividing S = ",
                   2 * row_bytes, ", but its shape is ", scales.shape().DebugString(), ".");
  }
  if (*groups >= 0 && scales.dim_size(1) != *groups) {
    return Invalid(kOp, "shared_scale and exclusive_scale hold ", *groups, " and ",
                   scales.dim_size(1), " scales per page; both stores must use the same group size.");
  }
  *groups = scales.dim_size(1);
  if (!TensorShapeUtils::IsVector(bits.shape()) || bits.dim_size(0) != rows) {
    return Invalid(kOp, name, "_bits must hold one kind per page, shape [", rows,
                   "], but its shape is ", bits.shape().DebugString(), ".");
  }
  const uint8_t* kinds = bits.flat<uint8_t>().data();
  store->wide_row.assign(rows, -1);
  int64_t wide_pages = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (kinds[i] == 8) {
      store->wide_row[i] = wide_pages++;
    } else if (kinds[i] != 4) {
      return Invalid(kOp, name, "_bits[", i, "] = ", static_cast<int>(kinds[i]),
                     " is not a page kind (4 or 8).");
    }
  }
  if (!TensorShapeUtils::IsMatrix(wide.shape()) || wide.dim_size(0) != wide_pages ||
      wide.dim_size(1) != row_bytes) {
    return Invalid(kOp, name, "_wide must hold one row of ", row_bytes, " bytes per int8 page, shape [",
                   wide_pages, ", ", row_bytes, "], but its shape is ", wide.shape().DebugString(), ".");
  }
  const uint16_t* scale_bits = reinterpret_cast<const uint16_t*>(scales.tensor_data().data());
  for (int64_t i = 0; i < scales.NumElements(); ++i) {
    if ((scale_bits[i] & 0x7C00u) == 0x7C00u || ((scale_bits[i] & 0x8000u) && scale_bits[i] != 0x8000u)) {
      return Invalid(kOp, name, "_scale holds a negative, infinite or NaN scale at element ", i,
                     "; scales must be finite and not negative.");
    }
  }
  store->values = static_cast<const uint8_t*>(values.data());
  store->scales = scale_bits;
  store->wide = static_cast<const uint8_t*>(wide.data());
  return absl::OkStatus();
}

// Writes n weights of one page (row `row` of `store`).
void DecodePage(const MixedStore& store, int64_t row, int64_t row_bytes, int64_t groups,
                int64_t n, float* dst) {
  const int64_t page_size = 2 * row_bytes;
  const int64_t group = page_size / groups;
  const uint8_t* codes = store.values + row * row_bytes;
  const uint16_t* scales = store.scales + row * groups;
  const int64_t w = store.wide_row[row];
  const uint8_t* low = w >= 0 ? store.wide + w * row_bytes : nullptr;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t byte = codes[j / 2];
    // A nibble is a 4-bit two's-complement number: shifting it to the top of
    // an int8 and back sign-extends it.
    int q = (j % 2) ? (static_cast<int8_t>(byte) >> 4) : (static_cast<int8_t>(byte << 4) >> 4);
    if (low != nullptr) q = q * 16 + ((j % 2) ? (low[j / 2] >> 4) : (low[j / 2] & 0x0F));
    dst[j] = static_cast<float>(q) * HalfToFloat(scales[j / group]);
  }
}

}  // namespace

template <typename Tindex>
class PageGatherQuantizedMixedOp : public OpKernel {
 public:
  explicit PageGatherQuantizedMixedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_weights", &num_weights_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& shared = ctx->input(0);
    const Tensor& exclusive = ctx->input(4);
    const Tensor& table = ctx->input(8);
    OP_REQUIRES_OK(ctx, CheckPageStores(kNames, shared, exclusive, table));
    const int64_t row_bytes = shared.dim_size(1);
    int64_t groups = -1;
    MixedStore pool, rows;
    OP_REQUIRES_OK(ctx, CheckStore("shared", shared, ctx->input(1), ctx->input(2), ctx->input(3),
                                   row_bytes, &groups, &pool));
    OP_REQUIRES_OK(ctx, CheckStore("exclusive", exclusive, ctx->input(5), ctx->input(6),
                                   ctx->input(7), row_bytes, &groups, &rows));
    const int64_t num_shared = shared.dim_size(0);
    const int64_t page_size = 2 * row_bytes;
    CheckedTable checked;
    OP_REQUIRES_OK(ctx, CheckPageTable<Tindex>(kOp, table, num_shared, exclusive.dim_size(0),
                                               page_size, num_weights_, &checked));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_weights_}), &out));
    if (num_weights_ == 0) return;
    float* dst = out->flat<float>().data();
    ForEachPageOnCpu(ctx, checked.entries, checked.num_pages, num_shared, page_size, num_weights_,
                     [&](const PageSlot& page) {
                       DecodePage(page.on_pool ? pool : rows, page.row, row_bytes, groups,
                                  page.size, dst + page.offset);
                     });
  }

 private:
  int64_t num_weights_ = 0;
};

#define REGISTER_CPU(Tindex)                                     \
  REGISTER_KERNEL_BUILDER(Name("PageGatherQuantizedMixed")       \
                              .Device(tensorflow::DEVICE_CPU)    \
                              .TypeConstraint<Tindex>("Tindex"), \
                          PageGatherQuantizedMixedOp<Tindex>);
REGISTER_CPU(int32_t)
REGISTER_CPU(int64_t)
#undef REGISTER_CPU

}  // namespace weightsep
