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
// Work split as PageGather's: one warp per page, no index division. The unit
// of work is a chunk of 4 weights, one float4 of output, read from 4 bytes
// (int8) or 2 bytes (int4): lane l of a warp handles chunks l, l + 32, ..., so
// both the loads (128 or 64 contiguous bytes per warp) and the float4 stores
// (512 contiguous bytes per warp) coalesce, and a lane issues all its loads
// before its first store. In a little-endian word, value k of either width is
// bits [k * bits, (k + 1) * bits), so one shift pair decodes both. When S is
// not a multiple of 4 or a pointer is misaligned, a scalar kernel runs instead.

#ifndef WEIGHTSEP_PAGE_GATHER_QUANTIZED_CU_
#define WEIGHTSEP_PAGE_GATHER_QUANTIZED_CU_

#include <cstdint>
#include <cuda_runtime.h>

namespace weightsep {

namespace page_gather_quantized_cuda {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / 32;

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

template <int kBits, int kUnroll>
__global__ void __launch_bounds__(kThreadsPerBlock)
    QuantizedVec4Kernel(const uint8_t* __restrict__ shared, const float* __restrict__ shared_scale,
                        const uint8_t* __restrict__ exclusive,
                        const float* __restrict__ exclusive_scale,
                        const int32_t* __restrict__ table, int num_shared, int chunks_per_page,
                        int64_t num_pages, int tail_chunks, int tail_floats,
                        float4* __restrict__ out) {
  using In = typename Chunk<kBits>::Type;
  const int lane = threadIdx.x & 31;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t page = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       page < num_pages; page += warp_stride) {
    const int e = __ldg(table + page);
    const bool on_pool = e < num_shared;
    const int64_t row = on_pool ? e : e - num_shared;
    const In* src = reinterpret_cast<const In*>(on_pool ? shared : exclusive) + row * chunks_per_page;
    const float scale = EffectiveScale(__ldg((on_pool ? shared_scale : exclusive_scale) + row));
    float4* dst = out + page * chunks_per_page;
    const bool last = page == num_pages - 1;
    const int n = last ? tail_chunks : chunks_per_page;
    for (int base = 0; base < n; base += 32 * kUnroll) {
      uint32_t r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = base + u * 32 + lane;
        if (j < n) r[u] = __ldg(src + j);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = base + u * 32 + lane;
        if (j < n)
          dst[j] = make_float4(Dequantize(Unpack<kBits>(r[u], 0), scale),
                               Dequantize(Unpack<kBits>(r[u], 1), scale),
                               Dequantize(Unpack<kBits>(r[u], 2), scale),
                               Dequantize(Unpack<kBits>(r[u], 3), scale));
      }
    }
    // The last page's leftover weights when num_weights is not a multiple of 4.
    if (last && lane < tail_floats) {
      const int j = tail_chunks * 4 + lane;
      reinterpret_cast<float*>(dst)[j] =
          Dequantize(ValueAt<kBits>(reinterpret_cast<const uint8_t*>(src), j), scale);
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
  const int lane = threadIdx.x & 31;
  const int64_t row_bytes = kBits == 8 ? page_size : page_size / 2;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t page = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       page < num_pages; page += warp_stride) {
    const int e = __ldg(table + page);
    const bool on_pool = e < num_shared;
    const int64_t row = on_pool ? e : e - num_shared;
    const uint8_t* src = (on_pool ? shared : exclusive) + row * row_bytes;
    const float scale = EffectiveScale(__ldg((on_pool ? shared_scale : exclusive_scale) + row));
    float* dst = out + page * page_size;
    const int n = page == num_pages - 1 ? tail : page_size;
    for (int j = lane; j < n; j += 32) dst[j] = Dequantize(ValueAt<kBits>(src, j), scale);
  }
}

inline bool AlignedTo(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

inline int BlocksFor(int64_t num_pages) {
  const int64_t blocks = (num_pages + kWarpsPerBlock - 1) / kWarpsPerBlock;
  // The kernels stride over pages, so a capped grid still covers them all.
  return static_cast<int>(blocks < (1 << 30) ? blocks : (1 << 30));
}

template <int kBits, int kUnroll>
cudaError_t LaunchVec4(const uint8_t* shared, const float* shared_scale, const uint8_t* exclusive,
                       const float* exclusive_scale, const int32_t* table, int num_shared,
                       int page_size, int64_t num_pages, int64_t num_weights, float* out,
                       cudaStream_t stream) {
  const int tail = static_cast<int>(num_weights - (num_pages - 1) * page_size);
  QuantizedVec4Kernel<kBits, kUnroll><<<BlocksFor(num_pages), kThreadsPerBlock, 0, stream>>>(
      shared, shared_scale, exclusive, exclusive_scale, table, num_shared, page_size / 4,
      num_pages, tail / 4, tail % 4, reinterpret_cast<float4*>(out));
  return cudaGetLastError();
}

template <int kBits>
cudaError_t LaunchScalar(const uint8_t* shared, const float* shared_scale,
                         const uint8_t* exclusive, const float* exclusive_scale,
                         const int32_t* table, int num_shared, int page_size, int64_t num_pages,
                         int64_t num_weights, float* out, cudaStream_t stream) {
  const int tail = static_cast<int>(num_weights - (num_pages - 1) * page_size);
  QuantizedScalarKernel<kBits><<<BlocksFor(num_pages), kThreadsPerBlock, 0, stream>>>(
      shared, shared_scale, exclusive, exclusive_scale, table, num_shared, page_size, num_pages,
      tail, out);
  return cudaGetLastError();
}

template <int kBits>
cudaError_t Launch(const uint8_t* shared, const float* shared_scale, const uint8_t* exclusive,
                   const float* exclusive_scale, const int32_t* table, int num_shared,
                   int page_size, int64_t num_pages, int64_t num_weights, float* out,
                   cudaStream_t stream) {
  // Chunk loads need rows aligned to the chunk's bytes; S % 4 == 0 keeps every
  // row aligned when the store's base pointer is.
  const uintptr_t chunk = sizeof(typename Chunk<kBits>::Type);
  const bool vec = page_size % 4 == 0 && AlignedTo(out, 16) && AlignedTo(shared, chunk) &&
                   (exclusive == nullptr || AlignedTo(exclusive, chunk));
  if (!vec)
    return LaunchScalar<kBits>(shared, shared_scale, exclusive, exclusive_scale, table,
                               num_shared, page_size, num_pages, num_weights, out, stream);
  // Enough chunks per lane to have a whole page in flight, up to 4 (S = 512).
  const int per_lane = (page_size / 4 + 31) / 32;
  if (per_lane >= 4)
    return LaunchVec4<kBits, 4>(shared, shared_scale, exclusive, exclusive_scale, table,
                                num_shared, page_size, num_pages, num_weights, out, stream);
  if (per_lane >= 2)
    return LaunchVec4<kBits, 2>(shared, shared_scale, exclusive, exclusive_scale, table,
                                num_shared, page_size, num_pages, num_weights, out, stream);
  return LaunchVec4<kBits, 1>(shared, shared_scale, exclusive, exclusive_scale, table,
                              num_shared, page_size, num_pages, num_weights, out, stream);
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
