// What the standalone CUDA harnesses (gpu_check.cu, gpu_check_quantized.cu)
// share: error checking, medians, the two ways of timing GPU work, the
// float32 task they time (a pool, a task's exclusive pages, its table) and its
// device buffers, and the bitwise check of an output against a reference.
//
// Every number is a median over repeated calls after warm-up, timed with CUDA
// events around the call, and with a host clock around launch +
// cudaStreamSynchronize (how a runtime sees a switch).

#ifndef WEIGHTSEP_GPU_CHECK_COMMON_CUH_
#define WEIGHTSEP_GPU_CHECK_COMMON_CUH_

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#define CUDA_CHECK(call)                                                      \
  do {                                                                        \
    cudaError_t err_ = (call);                                                \
    if (err_ != cudaSuccess) {                                                \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n",                    \
                   cudaGetErrorName(err_), __FILE__, __LINE__,                \
                   cudaGetErrorString(err_));                                 \
      std::exit(2);                                                           \
    }                                                                         \
  } while (0)

namespace gpu_check {

using Clock = std::chrono::steady_clock;

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timing {
  double event_us = 0, host_us = 0;
};

// Median over reps of fn(rep) timed by events and by host clock + sync.
inline Timing TimeGpu(const std::function<void(int)>& fn, int reps, cudaStream_t stream) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < std::max(10, reps / 10); ++i) fn(i);  // warm-up
  CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> ev, host;
  for (int i = 0; i < reps; ++i) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    fn(i);
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    ev.push_back(ms * 1e3);
  }
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn(i);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    host.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return {Median(ev), Median(host)};
}

// Median over batches of the event time of kBatch back-to-back calls, per call:
// the throughput of repeated calls, without the idle-GPU start of a lone call.
inline double TimeBatched(const std::function<void(int)>& fn, int reps, cudaStream_t stream) {
  constexpr int kBatch = 20;
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < kBatch; ++i) fn(i);
  std::vector<double> per_call;
  for (int b = 0; b < std::max(5, reps / kBatch); ++b) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    for (int i = 0; i < kBatch; ++i) fn(b * kBatch + i);
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    per_call.push_back(ms * 1e3 / kBatch);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return Median(per_call);
}

// One task in a store: a pool of P shared pages, the task's exclusive pages,
// and its table (entries >= P index the device copy of its exclusive pages).
struct Problem {
  int64_t num_weights = 0;
  int page_size = 0;
  int64_t num_pages = 0;
  int num_shared = 0;     // P
  int num_exclusive = 0;  // the task's exclusive pages
  std::vector<float> pool;
  std::vector<float> exclusive;
  std::vector<int32_t> table;
};

inline Problem MakeProblem(int64_t num_weights, int page_size, double exclusive_fraction,
                           std::mt19937_64& rng) {
  Problem p;
  p.num_weights = num_weights;
  p.page_size = page_size;
  p.num_pages = (num_weights + page_size - 1) / page_size;
  p.num_exclusive = static_cast<int>(std::lround(exclusive_fraction * p.num_pages));
  const int task_shared = static_cast<int>(p.num_pages) - p.num_exclusive;
  // The pool holds other tasks' pages too: the task uses a random subset.
  p.num_shared = task_shared + std::max(1, task_shared / 8);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  p.pool.resize(static_cast<size_t>(p.num_shared) * page_size);
  for (float& x : p.pool) x = normal(rng);
  p.exclusive.resize(static_cast<size_t>(p.num_exclusive) * page_size);
  for (float& x : p.exclusive) x = normal(rng);
  std::vector<int32_t> rows(p.num_shared);
  for (int i = 0; i < p.num_shared; ++i) rows[i] = i;
  std::shuffle(rows.begin(), rows.end(), rng);
  p.table.clear();
  for (int i = 0; i < task_shared; ++i) p.table.push_back(rows[i]);
  std::vector<int32_t> ex(p.num_exclusive);
  for (int i = 0; i < p.num_exclusive; ++i) ex[i] = p.num_shared + i;
  std::shuffle(ex.begin(), ex.end(), rng);
  p.table.insert(p.table.end(), ex.begin(), ex.end());
  std::shuffle(p.table.begin(), p.table.end(), rng);
  return p;
}

inline std::vector<float> Reference(const Problem& p) {
  std::vector<float> out(p.num_weights);
  for (int64_t i = 0; i < p.num_pages; ++i) {
    const int e = p.table[i];
    const float* src = e < p.num_shared
                           ? &p.pool[static_cast<size_t>(e) * p.page_size]
                           : &p.exclusive[static_cast<size_t>(e - p.num_shared) * p.page_size];
    const int64_t n = std::min<int64_t>(p.page_size, p.num_weights - i * p.page_size);
    std::memcpy(&out[i * p.page_size], src, n * sizeof(float));
  }
  return out;
}

constexpr int kGuard = 64;  // poisoned floats after the output that must stay untouched

// Device buffers of one float32 task; the exclusive pages' device copy is
// what a switch fills from the pinned host store.
struct DeviceSet {
  float* pool = nullptr;
  float* exclusive = nullptr;  // null when the task has no exclusive page
  int32_t* table = nullptr;
  float* out = nullptr;  // num_weights + kGuard floats
};

inline DeviceSet Upload(const Problem& p) {
  DeviceSet d;
  CUDA_CHECK(cudaMalloc(&d.pool, p.pool.size() * sizeof(float)));
  CUDA_CHECK(cudaMemcpy(d.pool, p.pool.data(), p.pool.size() * sizeof(float),
                        cudaMemcpyHostToDevice));
  if (!p.exclusive.empty()) {
    CUDA_CHECK(cudaMalloc(&d.exclusive, p.exclusive.size() * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(d.exclusive, p.exclusive.data(), p.exclusive.size() * sizeof(float),
                          cudaMemcpyHostToDevice));
  }
  CUDA_CHECK(cudaMalloc(&d.table, p.table.size() * sizeof(int32_t)));
  CUDA_CHECK(cudaMemcpy(d.table, p.table.data(), p.table.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMalloc(&d.out, (p.num_weights + kGuard) * sizeof(float)));
  return d;
}

inline void Free(DeviceSet& d) {
  CUDA_CHECK(cudaFree(d.pool));
  if (d.exclusive) CUDA_CHECK(cudaFree(d.exclusive));
  CUDA_CHECK(cudaFree(d.table));
  CUDA_CHECK(cudaFree(d.out));
  d = DeviceSet();
}

// Runs run() on a NaN-poisoned output (ref.size() floats + the guard zone) and
// compares every element bit for bit with ref, plus the untouched guard zone.
// Returns the number of wrong elements.
inline int64_t CheckRun(const std::vector<float>& ref, float* out,
                        const std::function<void()>& run, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(ref.size());
  CUDA_CHECK(cudaMemsetAsync(out, 0xFF, (n + kGuard) * sizeof(float), stream));
  run();
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> got(n + kGuard);
  CUDA_CHECK(cudaMemcpy(got.data(), out, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) != 0) ++bad;
  const uint32_t poison = 0xFFFFFFFFu;
  for (int i = 0; i < kGuard; ++i)
    if (std::memcmp(&got[n + i], &poison, sizeof(float)) != 0) ++bad;
  return bad;
}

// The tally printed before the tables.
inline void PrintChecks(int checks, int failures) {
  std::printf("\ncorrectness: %d checks, %d failed (bitwise vs CPU reference, NaN-poisoned output, guard zone)\n",
              checks, failures);
}

// The last line and the exit status: 1 if any check failed.
inline int Verdict(int failures) {
  if (failures) {
    std::printf("\nFAILED: %d correctness checks\n", failures);
    return 1;
  }
  std::printf("\nall correctness checks passed\n");
  return 0;
}

}  // namespace gpu_check

#endif  // WEIGHTSEP_GPU_CHECK_COMMON_CUH_
