// What the CUDA kernels of PageGather (page_gather.cu) and PageGatherQuantized
// (page_gather_quantized.cu) share: the work split (one warp per page, the
// grid striding over pages), the per-lane copy loop that keeps a lane's loads
// in flight before its stores, and the launch helpers (grid size, alignment,
// the last page's length, the unroll chosen for a page size, the launch).
//
// Includes no TensorFlow header: the standalone harnesses (../../gpu_check*.cu)
// #include the kernel sources and, through them, this file.

#ifndef WEIGHTSEP_PAGE_GATHER_LAUNCH_CUH_
#define WEIGHTSEP_PAGE_GATHER_LAUNCH_CUH_

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

namespace weightsep {
namespace page_cuda {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / 32;

// The calling thread's lane in its warp.
__device__ __forceinline__ int Lane() { return threadIdx.x & 31; }

// The first page of the calling warp; it then strides by WarpPageStride().
__device__ __forceinline__ int64_t FirstWarpPage() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
}

__device__ __forceinline__ int64_t WarpPageStride() {
  return static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
}

// A lane's share of one page of n units: units lane, lane + 32, ... < n. Per
// step the lane loads kUnroll units (load(j) returns unit j as T), then stores
// them (store(j, value)), so all its loads are in flight before its first
// store: with enough units per lane the whole page is in flight at once.
template <typename T, int kUnroll, typename Load, typename Store>
__device__ __forceinline__ void CopyLaneUnits(int n, int lane, Load load, Store store) {
  for (int base = 0; base < n; base += 32 * kUnroll) {
    T r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * 32 + lane;
      if (j < n) r[u] = load(j);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * 32 + lane;
      if (j < n) store(j, r[u]);
    }
  }
}

inline bool AlignedTo(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// Blocks for one warp per page. The kernels stride over pages, so a capped
// grid still covers them all.
inline int BlocksFor(int64_t num_pages) {
  const int64_t blocks = (num_pages + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<int>(blocks < (1 << 30) ? blocks : (1 << 30));
}

// The weights of the last page (num_pages = ceil(num_weights / page_size)).
inline int LastPageWeights(int64_t num_weights, int64_t num_pages, int page_size) {
  return static_cast<int>(num_weights - (num_pages - 1) * page_size);
}

// Calls launch(std::integral_constant<int, U>()) with U the units of 4
// weights a lane keeps in flight: enough for a whole page, up to 4 (S = 512).
template <typename Launch>
cudaError_t WithUnrollFor(int page_size, Launch launch) {
  const int per_lane = (page_size / 4 + 31) / 32;
  if (per_lane >= 4) return launch(std::integral_constant<int, 4>());
  if (per_lane >= 2) return launch(std::integral_constant<int, 2>());
  return launch(std::integral_constant<int, 1>());
}

// Launches kernel with one warp per page on stream; returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t LaunchOverPages(void (*kernel)(Params...), int64_t num_pages, cudaStream_t stream,
                            Args... args) {
  kernel<<<BlocksFor(num_pages), kThreadsPerBlock, 0, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace page_cuda
}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_LAUNCH_CUH_
