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
// structure runs on single floats. The work split, the copy loop and the launch
// helpers are PageGatherQuantized's too (page_gather_launch.cuh).

#ifndef WEIGHTSEP_PAGE_GATHER_CU_
#define WEIGHTSEP_PAGE_GATHER_CU_

#include <cstdint>
#include <cuda_runtime.h>

#include "page_gather_launch.cuh"

namespace weightsep {

// Which pages a launch writes. A switch can gather the shared pages while the
// task's exclusive pages are still being copied in, then gather those.
enum class PageSelect : int { kAll = 0, kShared = 1, kExclusive = 2 };

namespace page_gather_cuda {

using page_cuda::kThreadsPerBlock;

// Copies the pages of the warp-strided page range; V is float4 or float,
// kUnroll the accesses a lane keeps in flight per step. Pages whose kind
// (shared or exclusive) is not selected are skipped.
template <typename V, int kUnroll>
__global__ void __launch_bounds__(kThreadsPerBlock)
    PageGatherKernel(const V* __restrict__ shared, const V* __restrict__ exclusive,
                     const int32_t* __restrict__ table, int num_shared,
                     int vecs_per_page, int64_t num_pages, int tail_vecs,
                     int tail_floats, PageSelect select, V* __restrict__ out) {
  const int lane = page_cuda::Lane();
  const int64_t warp_stride = page_cuda::WarpPageStride();
  for (int64_t page = page_cuda::FirstWarpPage(); page < num_pages; page += warp_stride) {
    const int e = __ldg(table + page);
    if (select != PageSelect::kAll && (e >= num_shared) != (select == PageSelect::kExclusive))
      continue;
    const V* src = e < num_shared
                       ? shared + static_cast<int64_t>(e) * vecs_per_page
                       : exclusive + static_cast<int64_t>(e - num_shared) * vecs_per_page;
    V* dst = out + page * vecs_per_page;
    const bool last = page == num_pages - 1;
    page_cuda::CopyLaneUnits<V, kUnroll>(
        last ? tail_vecs : vecs_per_page, lane, [&](int j) { return __ldg(src + j); },
        [&](int j, const V& v) { dst[j] = v; });
    // The last page's leftover floats when num_weights is not a multiple of 4.
    if (last && lane < tail_floats) {
      const float* s = reinterpret_cast<const float*>(src + tail_vecs);
      reinterpret_cast<float*>(dst + tail_vecs)[lane] = s[lane];
    }
  }
}

template <int kUnroll>
cudaError_t LaunchVec4(const float* shared, const float* exclusive, const int32_t* table,
                       int num_shared, int page_size, int64_t num_pages,
                       int64_t num_weights, float* out, cudaStream_t stream,
                       PageSelect select = PageSelect::kAll) {
  const int tail = page_cuda::LastPageWeights(num_weights, num_pages, page_size);
  return page_cuda::LaunchOverPages(
      PageGatherKernel<float4, kUnroll>, num_pages, stream,
      reinterpret_cast<const float4*>(shared), reinterpret_cast<const float4*>(exclusive), table,
      num_shared, page_size / 4, num_pages, tail / 4, tail % 4, select,
      reinterpret_cast<float4*>(out));
}

template <int kUnroll>
cudaError_t LaunchScalar(const float* shared, const float* exclusive, const int32_t* table,
                         int num_shared, int page_size, int64_t num_pages,
                         int64_t num_weights, float* out, cudaStream_t stream,
                         PageSelect select = PageSelect::kAll) {
  return page_cuda::LaunchOverPages(
      PageGatherKernel<float, kUnroll>, num_pages, stream, shared, exclusive, table, num_shared,
      page_size, num_pages, page_cuda::LastPageWeights(num_weights, num_pages, page_size), 0,
      select, out);
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
  using page_cuda::AlignedTo;
  if (num_pages <= 0 || num_weights <= 0) return cudaSuccess;
  // exclusive may be null when no page is exclusive; it is then never read.
  const bool vec = page_size % 4 == 0 && AlignedTo(shared, 16) && AlignedTo(out, 16) &&
                   (exclusive == nullptr || AlignedTo(exclusive, 16));
  if (!vec)
    return page_gather_cuda::LaunchScalar<4>(shared, exclusive, table, num_shared, page_size,
                                             num_pages, num_weights, out, stream, select);
  return page_cuda::WithUnrollFor(page_size, [&](auto unroll) {
    return page_gather_cuda::LaunchVec4<decltype(unroll)::value>(
        shared, exclusive, table, num_shared, page_size, num_pages, num_weights, out, stream,
        select);
  });
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
