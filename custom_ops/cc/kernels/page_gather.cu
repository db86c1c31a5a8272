// CUDA kernel of PageGather and its plain launcher.
//
// Materializes a task's weights from weight-pages: for page i with entry
// e = table[i], copy shared row e (e < P) or exclusive row e - P (e >= P) to
// out[i*S : (i+1)*S], the last page cut at num_weights. This file includes no
// TensorFlow header, so the TensorFlow kernel (page_gather_kernels.cc) links it
// and the standalone harness (../../gpu_check.cu) #includes it: both run the
// same kernel. The table must be on the device and already bounds-checked by
// the caller (both callers check it on the host, where it is small).
//
// Work split: one warp per page (no index division: a page's rows are
// contiguous), lanes striding over the page in 16-byte float4 accesses that a
// warp coalesces into 512-byte transactions; each lane issues all its loads
// before its first store so that a page is in flight at once. When the page
// size is not a multiple of 4 or a pointer is not 16-byte aligned, the same
// structure runs on single floats.

#ifndef WEIGHTSEP_PAGE_GATHER_CU_
#define WEIGHTSEP_PAGE_GATHER_CU_

#include <cstdint>
#include <cuda_runtime.h>

namespace weightsep {

// Which pages a launch writes. A switch can gather the shared pages while the
// task's exclusive pages are still being copied in, then gather those.
enum class PageSelect : int { kAll = 0, kShared = 1, kExclusive = 2 };

namespace page_gather_cuda {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / 32;

// Copies the pages of the warp-strided page range; V is float4 or float,
// kUnroll the accesses a lane keeps in flight per step. Pages whose kind
// (shared or exclusive) is not selected are skipped.
template <typename V, int kUnroll>
__global__ void __launch_bounds__(kThreadsPerBlock)
    PageGatherKernel(const V* __restrict__ shared, const V* __restrict__ exclusive,
                     const int32_t* __restrict__ table, int num_shared,
                     int vecs_per_page, int64_t num_pages, int tail_vecs,
                     int tail_floats, PageSelect select, V* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t page = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       page < num_pages; page += warp_stride) {
    const int e = __ldg(table + page);
    if (select != PageSelect::kAll && (e >= num_shared) != (select == PageSelect::kExclusive))
      continue;
    const V* src = e < num_shared
                       ? shared + static_cast<int64_t>(e) * vecs_per_page
                       : exclusive + static_cast<int64_t>(e - num_shared) * vecs_per_page;
    V* dst = out + page * vecs_per_page;
    const bool last = page == num_pages - 1;
    const int n = last ? tail_vecs : vecs_per_page;
    for (int base = 0; base < n; base += 32 * kUnroll) {
      V r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = base + u * 32 + lane;
        if (j < n) r[u] = __ldg(src + j);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = base + u * 32 + lane;
        if (j < n) dst[j] = r[u];
      }
    }
    // The last page's leftover floats when num_weights is not a multiple of 4.
    if (last && lane < tail_floats) {
      const float* s = reinterpret_cast<const float*>(src + tail_vecs);
      reinterpret_cast<float*>(dst + tail_vecs)[lane] = s[lane];
    }
  }
}

inline bool Aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

inline int BlocksFor(int64_t num_pages) {
  const int64_t blocks = (num_pages + kWarpsPerBlock - 1) / kWarpsPerBlock;
  // The kernel strides over pages, so a capped grid still covers them all.
  return static_cast<int>(blocks < (1 << 30) ? blocks : (1 << 30));
}

template <int kUnroll>
cudaError_t LaunchVec4(const float* shared, const float* exclusive, const int32_t* table,
                       int num_shared, int page_size, int64_t num_pages,
                       int64_t num_weights, float* out, cudaStream_t stream,
                       PageSelect select = PageSelect::kAll) {
  const int vecs_per_page = page_size / 4;
  const int tail = static_cast<int>(num_weights - (num_pages - 1) * page_size);
  PageGatherKernel<float4, kUnroll><<<BlocksFor(num_pages), kThreadsPerBlock, 0, stream>>>(
      reinterpret_cast<const float4*>(shared), reinterpret_cast<const float4*>(exclusive),
      table, num_shared, vecs_per_page, num_pages, tail / 4, tail % 4, select,
      reinterpret_cast<float4*>(out));
  return cudaGetLastError();
}

template <int kUnroll>
cudaError_t LaunchScalar(const float* shared, const float* exclusive, const int32_t* table,
                         int num_shared, int page_size, int64_t num_pages,
                         int64_t num_weights, float* out, cudaStream_t stream,
                         PageSelect select = PageSelect::kAll) {
  const int tail = static_cast<int>(num_weights - (num_pages - 1) * page_size);
  PageGatherKernel<float, kUnroll><<<BlocksFor(num_pages), kThreadsPerBlock, 0, stream>>>(
      shared, exclusive, table, num_shared, page_size, num_pages, tail, 0, select, out);
  return cudaGetLastError();
}

}  // namespace page_gather_cuda

// Gathers num_weights floats into out (device) from shared [num_shared, page_size]
// and exclusive [*, page_size] (both device) by table int32[num_pages] (device),
// num_pages = ceil(num_weights / page_size), every entry in range: the caller
// checks. Writes only the pages of the selected kind. Enqueues on stream and
// returns the launch's error code.
cudaError_t LaunchPageGatherPages(const float* shared, const float* exclusive,
                                  const int32_t* table, int num_shared, int page_size,
                                  int64_t num_pages, int64_t num_weights, float* out,
                                  cudaStream_t stream, PageSelect select) {
  using namespace page_gather_cuda;
  if (num_pages <= 0 || num_weights <= 0) return cudaSuccess;
  // exclusive may be null when no page is exclusive; it is then never read.
  const bool vec = page_size % 4 == 0 && Aligned16(shared) && Aligned16(out) &&
                   (exclusive == nullptr || Aligned16(exclusive));
  if (vec) {
    // Enough float4s per lane to have a whole page in flight, up to 4 (S = 512).
    const int per_lane = (page_size / 4 + 31) / 32;
    if (per_lane >= 4)
      return LaunchVec4<4>(shared, exclusive, table, num_shared, page_size, num_pages,
                           num_weights, out, stream, select);
    if (per_lane >= 2)
      return LaunchVec4<2>(shared, exclusive, table, num_shared, page_size, num_pages,
                           num_weights, out, stream, select);
    return LaunchVec4<1>(shared, exclusive, table, num_shared, page_size, num_pages,
                         num_weights, out, stream, select);
  }
  return LaunchScalar<4>(shared, exclusive, table, num_shared, page_size, num_pages,
                         num_weights, out, stream, select);
}

// All pages: the whole network.
cudaError_t LaunchPageGather(const float* shared, const float* exclusive, const int32_t* table,
                             int num_shared, int page_size, int64_t num_pages,
                             int64_t num_weights, float* out, cudaStream_t stream) {
  return LaunchPageGatherPages(shared, exclusive, table, num_shared, page_size, num_pages,
                               num_weights, out, stream, PageSelect::kAll);
}

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_CU_
