// CUDA kernel of PageGatherQuantized and its plain launcher.
//
// Materializes a task's float32 weights from quantized weight-pages: for page
// i with entry e = table[i], the row is shared row e (e < P) or exclusive row
// e - P (e >= P), and weight j of the page is float32(q_j) * scale[row], cut
// at num_weights. Rows hold S int8 values (bits 8) or S int4 values packed two
// per byte (bits 4: value 2k in the low nibble of byte k, 2k + 1 in the high
// nibble, 4-bit two's complement); a subnormal scale counts as a zero of its
// sign. This file includes no TensorFlow header:
// the TensorFlow kernel (page_gather_quantized_kernels.cc) links it and the
// standalone harness (../../gpu_check_quantized.cu) #includes it. The table
// must be on the device and already bounds-checked by the caller.
//
// Work split as PageGather's (page_gather_launch.cuh): one warp per page, no
// index division. The unit of work is a chunk of 4 weights, one float4 of
// output, read from 4 bytes (int8) or 2 bytes (int4): lane l of a warp handles
// chunks l, l + 32, ..., so both the loads (128 or 64 contiguous bytes per
// warp) and the float4 stores (512 contiguous bytes per warp) coalesce, and a
// lane issues all its loads before its first store. In a little-endian word,
// value k of either width is bits [k * bits, (k + 1) * bits), so one shift pair
// decodes both. When S is not a multiple of 4 or a pointer is misaligned, a
// scalar kernel runs instead.

#ifndef WEIGHTSEP_PAGE_GATHER_QUANTIZED_CU_
#define WEIGHTSEP_PAGE_GATHER_QUANTIZED_CU_

#include <cstdint>
#include <cuda_runtime.h>

#include "page_gather_launch.cuh"

namespace weightsep {

namespace page_gather_quantized_cuda {

using page_cuda::kThreadsPerBlock;

// Value k of a little-endian word of kBits-bit two's-complement values,
// sign-extended: shifted to the top, then arithmetic-shifted down.
template <int kBits>
__device__ __forceinline__ int Unpack(uint32_t word, int k) {
  return static_cast<int32_t>(word << (32 - kBits * (k + 1))) >> (32 - kBits);
}

// Value j of a page row, sign-extended.
template <int kBits>
__device__ __forceinline__ int ValueAt(const uint8_t* row, int j) {
  if (kBits == 8) return static_cast<int8_t>(row[j]);
  return Unpack<4>(row[j >> 1], j & 1);
}

// Dequantization is this one float32 multiply, round to nearest, never
// contracted with anything: the result is bit-exact against a CPU reference.
__device__ __forceinline__ float Dequantize(int q, float scale) {
  return __fmul_rn(static_cast<float>(q), scale);
}

// A subnormal scale counts as a zero of its sign, as on the CPU (where
// TensorFlow flushes denormals): every device gives the same bits.
__device__ __forceinline__ float EffectiveScale(float scale) {
  const uint32_t bits = __float_as_uint(scale);
  return (bits & 0x7F800000u) ? scale : __uint_as_float(bits & 0x80000000u);
}

// The bytes of one chunk (4 weights).
template <int kBits>
struct Chunk;
template <>
struct Chunk<8> {
  using Type = uint32_t;
};
template <>
struct Chunk<4> {
  using Type = uint16_t;
};

// The page of table entry e: its row in the pool (e < num_shared) or in the
// exclusive store, as units of In (row_units per row), and its effective scale.
template <typename In>
struct QuantizedPage {
  const In* src;
  float scale;
};

template <typename In>
__device__ __forceinline__ QuantizedPage<In> PageOf(int e, int num_shared, int64_t row_units,
                                                    const uint8_t* shared,
                                                    const float* shared_scale,
                                                    const uint8_t* exclusive,
                                                    const float* exclusive_scale) {
  const bool on_pool = e < num_shared;
  const int64_t row = on_pool ? e : e - num_shared;
  return {reinterpret_cast<const In*>(on_pool ? shared : exclusive) + row * row_units,
          EffectiveScale(__ldg((on_pool ? shared_scale : exclusive_scale) + row))};
}

// At least 8 blocks of 256 threads per SM, so at most 32 registers a thread:
// full occupancy, as the kernel had before its copy loop moved to
// page_cuda::CopyLaneUnits (which alone would make ptxas take 36-39 for some
// variants). ptxas fits every variant without spills.
template <int kBits, int kUnroll>
__global__ void __launch_bounds__(kThreadsPerBlock, 8)
    QuantizedVec4Kernel(const uint8_t* __restrict__ shared, const float* __restrict__ shared_scale,
                        const uint8_t* __restrict__ exclusive,
                        const float* __restrict__ exclusive_scale,
                        const int32_t* __restrict__ table, int num_shared, int chunks_per_page,
                        int64_t num_pages, int tail_chunks, int tail_floats,
                        float4* __restrict__ out) {
  using In = typename Chunk<kBits>::Type;
  const int lane = page_cuda::Lane();
  const int64_t warp_stride = page_cuda::WarpPageStride();
  for (int64_t page = page_cuda::FirstWarpPage(); page < num_pages; page += warp_stride) {
    const QuantizedPage<In> p = PageOf<In>(__ldg(table + page), num_shared, chunks_per_page,
                                           shared, shared_scale, exclusive, exclusive_scale);
    float4* dst = out + page * chunks_per_page;
    const bool last = page == num_pages - 1;
    page_cuda::CopyLaneUnits<uint32_t, kUnroll>(
        last ? tail_chunks : chunks_per_page, lane, [&](int j) { return __ldg(p.src + j); },
        [&](int j, uint32_t word) {
          dst[j] = make_float4(Dequantize(Unpack<kBits>(word, 0), p.scale),
                               Dequantize(Unpack<kBits>(word, 1), p.scale),
                               Dequantize(Unpack<kBits>(word, 2), p.scale),
                               Dequantize(Unpack<kBits>(word, 3), p.scale));
        });
    // The last page's leftover weights when num_weights is not a multiple of 4.
    if (last && lane < tail_floats) {
      const int j = tail_chunks * 4 + lane;
      reinterpret_cast<float*>(dst)[j] =
          Dequantize(ValueAt<kBits>(reinterpret_cast<const uint8_t*>(p.src), j), p.scale);
    }
  }
}

template <int kBits>
__global__ void __launch_bounds__(kThreadsPerBlock)
    QuantizedScalarKernel(const uint8_t* __restrict__ shared,
                          const float* __restrict__ shared_scale,
                          const uint8_t* __restrict__ exclusive,
                          const float* __restrict__ exclusive_scale,
                          const int32_t* __restrict__ table, int num_shared, int page_size,
                          int64_t num_pages, int tail, float* __restrict__ out) {
  const int lane = page_cuda::Lane();
  const int64_t row_bytes = kBits == 8 ? page_size : page_size / 2;
  const int64_t warp_stride = page_cuda::WarpPageStride();
  for (int64_t page = page_cuda::FirstWarpPage(); page < num_pages; page += warp_stride) {
    const QuantizedPage<uint8_t> p = PageOf<uint8_t>(__ldg(table + page), num_shared, row_bytes,
                                                     shared, shared_scale, exclusive,
                                                     exclusive_scale);
    float* dst = out + page * page_size;
    const int n = page == num_pages - 1 ? tail : page_size;
    for (int j = lane; j < n; j += 32) dst[j] = Dequantize(ValueAt<kBits>(p.src, j), p.scale);
  }
}

template <int kBits, int kUnroll>
cudaError_t LaunchVec4(const uint8_t* shared, const float* shared_scale, const uint8_t* exclusive,
                       const float* exclusive_scale, const int32_t* table, int num_shared,
                       int page_size, int64_t num_pages, int64_t num_weights, float* out,
                       cudaStream_t stream) {
  const int tail = page_cuda::LastPageWeights(num_weights, num_pages, page_size);
  return page_cuda::LaunchOverPages(QuantizedVec4Kernel<kBits, kUnroll>, num_pages, stream,
                                    shared, shared_scale, exclusive, exclusive_scale, table,
                                    num_shared, page_size / 4, num_pages, tail / 4, tail % 4,
                                    reinterpret_cast<float4*>(out));
}

template <int kBits>
cudaError_t LaunchScalar(const uint8_t* shared, const float* shared_scale,
                         const uint8_t* exclusive, const float* exclusive_scale,
                         const int32_t* table, int num_shared, int page_size, int64_t num_pages,
                         int64_t num_weights, float* out, cudaStream_t stream) {
  return page_cuda::LaunchOverPages(QuantizedScalarKernel<kBits>, num_pages, stream, shared,
                                    shared_scale, exclusive, exclusive_scale, table, num_shared,
                                    page_size, num_pages,
                                    page_cuda::LastPageWeights(num_weights, num_pages, page_size),
                                    out);
}

template <int kBits>
cudaError_t Launch(const uint8_t* shared, const float* shared_scale, const uint8_t* exclusive,
                   const float* exclusive_scale, const int32_t* table, int num_shared,
                   int page_size, int64_t num_pages, int64_t num_weights, float* out,
                   cudaStream_t stream) {
  using page_cuda::AlignedTo;
  // Chunk loads need rows aligned to the chunk's bytes; S % 4 == 0 keeps every
  // row aligned when the store's base pointer is.
  const uintptr_t chunk = sizeof(typename Chunk<kBits>::Type);
  const bool vec = page_size % 4 == 0 && AlignedTo(out, 16) && AlignedTo(shared, chunk) &&
                   (exclusive == nullptr || AlignedTo(exclusive, chunk));
  if (!vec)
    return LaunchScalar<kBits>(shared, shared_scale, exclusive, exclusive_scale, table,
                               num_shared, page_size, num_pages, num_weights, out, stream);
  return page_cuda::WithUnrollFor(page_size, [&](auto unroll) {
    return LaunchVec4<kBits, decltype(unroll)::value>(shared, shared_scale, exclusive,
                                                      exclusive_scale, table, num_shared,
                                                      page_size, num_pages, num_weights, out,
                                                      stream);
  });
}

}  // namespace page_gather_quantized_cuda

// Gathers num_weights float32 weights into out (device) from quantized pages:
// shared [num_shared rows] and exclusive [* rows] of page_size int8 values
// (bits 8) or page_size / 2 bytes of packed int4 pairs (bits 4), one float32
// scale per row (shared_scale, exclusive_scale), by table int32[num_pages],
// num_pages = ceil(num_weights / page_size), every entry in range: the caller
// checks. All pointers on the device; exclusive and exclusive_scale may be
// null when no entry is exclusive. Enqueues on stream and returns the
// launch's error code (cudaErrorInvalidValue for bits other than 4 and 8, or
// an odd page size with bits 4).
cudaError_t LaunchPageGatherQuantized(const uint8_t* shared, const float* shared_scale,
                                      const uint8_t* exclusive, const float* exclusive_scale,
                                      const int32_t* table, int num_shared, int page_size,
                                      int64_t num_pages, int64_t num_weights, int bits,
                                      float* out, cudaStream_t stream) {
  using namespace page_gather_quantized_cuda;
  if (bits != 8 && !(bits == 4 && page_size % 2 == 0)) return cudaErrorInvalidValue;
  if (num_pages <= 0 || num_weights <= 0) return cudaSuccess;
  if (bits == 8)
    return Launch<8>(shared, shared_scale, exclusive, exclusive_scale, table, num_shared,
                     page_size, num_pages, num_weights, out, stream);
  return Launch<4>(shared, shared_scale, exclusive, exclusive_scale, table, num_shared,
                   page_size, num_pages, num_weights, out, stream);
}

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_QUANTIZED_CU_
