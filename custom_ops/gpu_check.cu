// Standalone check and benchmark of the PageGather CUDA kernel, no TensorFlow.
//
// Includes the very kernel source that the TensorFlow op links
// (cc/kernels/page_gather.cu), checks it bit for bit against a CPU reference on
// random inputs (the output poisoned with NaN before every checked run, a guard
// zone after it), then times a task switch with weight separation against the
// baselines that reload the whole network:
//   (a) gather only (device-resident pool and exclusive pages),
//   (b) WS switch: cudaMemcpyAsync of the task's exclusive pages from pinned
//       host memory + gather,
//   (c) whole network host -> device from pinned and from pageable memory,
//   (d) whole network read from a file (page cache warm, and cold after
//       posix_fadvise(DONTNEED)) into pinned memory + copy to the device.
// GPU work is timed with CUDA events around each call, and also with a host
// clock around launch + cudaStreamSynchronize (how the targets were measured);
// file baselines with the host clock. Every number is the median of --reps
// calls after warm-up. When one input set fits in L2, the timed calls rotate
// among enough sets to span twice the L2 size, so that the numbers are not
// L2-hot; the "hot" column repeats one set.
//
// Build and run: make -C custom_ops gpu_check && ./custom_ops/gpu_check
// Flags: --reps N (default 200), --data-dir DIR (file baseline; default .)

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cc/kernels/page_gather.cu"
#include "gpu_check_common.cuh"

namespace {

using gpu_check::CheckRun;
using gpu_check::Clock;
using gpu_check::DeviceSet;
using gpu_check::Free;
using gpu_check::MakeProblem;
using gpu_check::Median;
using gpu_check::Problem;
using gpu_check::Reference;
using gpu_check::TimeBatched;
using gpu_check::TimeGpu;
using gpu_check::Timing;
using gpu_check::Upload;
using weightsep::LaunchPageGather;
namespace pgc = weightsep::page_gather_cuda;

// The kind of kernel the targets came from: one thread per weight, grid-stride,
// a division per element. Timed as the in-run reference point.
__global__ void NaiveGatherKernel(const float* shared, const float* exclusive,
                                  const int32_t* table, int num_shared, int page_size,
                                  int64_t num_weights, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < num_weights; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t page = i / page_size;
    const int64_t off = i - page * page_size;
    const int e = table[page];
    out[i] = e < num_shared ? shared[e * static_cast<int64_t>(page_size) + off]
                            : exclusive[(e - num_shared) * static_cast<int64_t>(page_size) + off];
  }
}

cudaError_t LaunchNaive(const float* shared, const float* exclusive, const int32_t* table,
                        int num_shared, int page_size, int64_t num_pages, int64_t num_weights,
                        float* out, cudaStream_t stream) {
  (void)num_pages;
  const int threads = 256;
  int64_t blocks = (num_weights + threads - 1) / threads;
  blocks = std::min<int64_t>(blocks, 132 * 16);
  NaiveGatherKernel<<<static_cast<int>(blocks), threads, 0, stream>>>(
      shared, exclusive, table, num_shared, page_size, num_weights, out);
  return cudaGetLastError();
}

template <int kUnroll>
cudaError_t LaunchVecVariant(const float* shared, const float* exclusive, const int32_t* table,
                             int num_shared, int page_size, int64_t num_pages,
                             int64_t num_weights, float* out, cudaStream_t stream) {
  return pgc::LaunchVec4<kUnroll>(shared, exclusive, table, num_shared, page_size, num_pages,
                                  num_weights, out, stream);
}

using Launcher = cudaError_t (*)(const float*, const float*, const int32_t*, int, int, int64_t,
                                 int64_t, float*, cudaStream_t);

int64_t CheckOnce(const Problem& p, const DeviceSet& d, Launcher launch, cudaStream_t stream) {
  return CheckRun(Reference(p), d.out, [&] {
    CUDA_CHECK(launch(d.pool, d.exclusive, d.table, p.num_shared, p.page_size, p.num_pages,
                      p.num_weights, d.out, stream));
  }, stream);
}

struct FileTiming {
  double warm_us = -1, cold_us = -1;
  std::string note;
};

// Whole network from a file: open + read into pinned memory + copy + sync.
FileTiming TimeFile(const std::string& dir, const std::vector<float>& net, float* pinned,
                    float* dev, int reps, cudaStream_t stream) {
  FileTiming ft;
  const std::string path = dir + "/gpu_check_network_" + std::to_string(net.size()) + ".bin";
  const size_t bytes = net.size() * sizeof(float);
  {
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) { ft.note = "cannot write " + path; return ft; }
    size_t done = 0;
    while (done < bytes) {
      const ssize_t w = write(fd, reinterpret_cast<const char*>(net.data()) + done, bytes - done);
      if (w <= 0) { close(fd); ft.note = "write failed"; return ft; }
      done += w;
    }
    fsync(fd);  // clean pages, so DONTNEED can drop them
    close(fd);
  }
  struct statfs sfs;
  if (statfs(dir.c_str(), &sfs) == 0 && sfs.f_type == 0x01021994) ft.note = "tmpfs: cold == warm";
  auto read_once = [&](bool cold) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) { std::perror("open"); std::exit(2); }
    if (cold) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    const auto t0 = Clock::now();
    if (cold) {  // the fadvise above is outside the timed region; reopen inside it
      close(fd);
      fd = open(path.c_str(), O_RDONLY);
    }
    size_t done = 0;
    while (done < bytes) {
      const ssize_t r = read(fd, reinterpret_cast<char*>(pinned) + done, bytes - done);
      if (r <= 0) { std::perror("read"); std::exit(2); }
      done += r;
    }
    close(fd);
    CUDA_CHECK(cudaMemcpyAsync(dev, pinned, bytes, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  };
  for (int i = 0; i < 3; ++i) read_once(false);
  std::vector<double> warm, cold;
  for (int i = 0; i < reps; ++i) warm.push_back(read_once(false));
  for (int i = 0; i < std::max(5, reps / 4); ++i) cold.push_back(read_once(true));
  ft.warm_us = Median(warm);
  ft.cold_us = Median(cold);
  if (std::memcmp(pinned, net.data(), bytes) != 0) { std::fprintf(stderr, "file read back wrong\n"); std::exit(2); }
  unlink(path.c_str());
  return ft;
}

struct Row {
  int64_t n;
  int sets;
  double gather_ev, gather_host, gather_hot, gather_batch, switch_ev, switch_host;
  double overlap_ev, overlap_host, zero_ev, zero_host;
  double naive_ev, naive_host, d2d_ev;
  double pinned_ev, pinned_host, pageable_host, file_warm, file_cold;
  double u1, u2, u4;
  std::string file_note;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 200;
  std::string data_dir = ".";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--data-dir") && i + 1 < argc) data_dir = argv[++i];
    else { std::fprintf(stderr, "usage: %s [--reps N] [--data-dir DIR]\n", argv[0]); return 2; }
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.1f MB, CUDA runtime %d\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize / 1e6, CUDART_VERSION);
  cudaStream_t stream, copy_stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
  cudaEvent_t fork, copied;
  CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
  std::mt19937_64 rng(20220321);

  // 1. Correctness on shapes that take every path of the launcher.
  struct Case { int64_t n; int s; double ex; };
  const Case cases[] = {
      {65536, 512, 0.07},       {65536 + 37, 512, 0.07}, {1000, 500, 0.3},
      {10007, 510, 0.2},        {4096, 64, 0.1},         {3000, 256, 0.0},
      {12345, 4, 0.5},          {1, 512, 0.0},           {777, 3, 0.4},
      {1 << 20, 512, 0.07},     {(1 << 24) + 3, 512, 0.07},
  };
  const std::pair<const char*, Launcher> launchers[] = {
      {"LaunchPageGather", LaunchPageGather},
      {"naive", LaunchNaive},
  };
  int failures = 0, checks = 0;
  for (const Case& c : cases) {
    for (int rep = 0; rep < 2; ++rep) {  // fresh random inputs each time
      Problem p = MakeProblem(c.n, c.s, c.ex, rng);
      DeviceSet d = Upload(p);
      for (const auto& l : launchers) {
        const int64_t bad = CheckOnce(p, d, l.second, stream);
        ++checks;
        if (bad) {
          ++failures;
          std::printf("FAIL %s n=%lld S=%d exclusive=%d: %lld wrong elements\n", l.first,
                      (long long)c.n, c.s, p.num_exclusive, (long long)bad);
        }
      }
      if (c.s % 4 == 0) {
        const Launcher vs[] = {LaunchVecVariant<1>, LaunchVecVariant<2>, LaunchVecVariant<4>,
                               LaunchVecVariant<8>};
        for (Launcher v : vs) {
          ++checks;
          if (const int64_t bad = CheckOnce(p, d, v, stream)) {
            ++failures;
            std::printf("FAIL vec variant n=%lld S=%d: %lld wrong\n", (long long)c.n, c.s,
                        (long long)bad);
          }
        }
      }
      Free(d);
    }
  }
  std::printf("correctness: %d checks, %d failed\n", checks, failures);

  // 2. Timing, page size 512, ~7% exclusive pages.
  std::vector<Row> rows;
  const int64_t sizes[] = {65536, 1 << 20, 1 << 24};
  for (int64_t n : sizes) {
    Row r{};
    r.n = n;
    const Problem p0 = MakeProblem(n, 512, 0.07, rng);
    const size_t set_bytes = (p0.pool.size() + p0.exclusive.size() + n) * sizeof(float);
    int sets = 1;
    if (set_bytes < static_cast<size_t>(prop.l2CacheSize))
      sets = static_cast<int>(std::min<size_t>(256, (2 * prop.l2CacheSize + set_bytes - 1) / set_bytes));
    r.sets = sets;
    std::vector<Problem> problems;
    std::vector<DeviceSet> dev;
    problems.push_back(p0);
    for (int i = 1; i < sets; ++i) problems.push_back(MakeProblem(n, 512, 0.07, rng));
    for (const Problem& p : problems) dev.push_back(Upload(p));
    const Problem& p = problems[0];
    // The host exclusive store (pinned) holds three tasks' blocks; this task's is the middle.
    const size_t ex_floats = p.exclusive.size();
    float* store = nullptr;
    CUDA_CHECK(cudaMallocHost(&store, std::max<size_t>(1, 3 * ex_floats) * sizeof(float)));
    for (size_t i = 0; i < 3 * ex_floats; ++i) store[i] = 0.001f * (i % 997);
    std::memcpy(store + ex_floats, p.exclusive.data(), ex_floats * sizeof(float));
    const float* task_block = store + ex_floats;

    auto gather = [&](Launcher l, int set) {
      const Problem& q = problems[set];
      const DeviceSet& d = dev[set];
      CUDA_CHECK(l(d.pool, d.exclusive, d.table, q.num_shared, q.page_size, q.num_pages,
                   q.num_weights, d.out, stream));
    };
    Timing t = TimeGpu([&](int i) { gather(LaunchPageGather, i % sets); }, reps, stream);
    r.gather_ev = t.event_us;
    r.gather_host = t.host_us;
    r.gather_hot = TimeGpu([&](int) { gather(LaunchPageGather, 0); }, reps, stream).event_us;
    r.gather_batch = TimeBatched([&](int i) { gather(LaunchPageGather, i % sets); }, reps, stream);
    t = TimeGpu([&](int i) { gather(LaunchNaive, i % sets); }, reps, stream);
    r.naive_ev = t.event_us;
    r.naive_host = t.host_us;
    r.u1 = TimeGpu([&](int i) { gather(LaunchVecVariant<1>, i % sets); }, reps, stream).event_us;
    r.u2 = TimeGpu([&](int i) { gather(LaunchVecVariant<2>, i % sets); }, reps, stream).event_us;
    r.u4 = TimeGpu([&](int i) { gather(LaunchVecVariant<4>, i % sets); }, reps, stream).event_us;
    // Device-to-device copy of the same bytes: the ceiling for any gather.
    r.d2d_ev = TimeGpu([&](int i) {
      const DeviceSet& d = dev[i % sets];
      CUDA_CHECK(cudaMemcpyAsync(d.out, d.pool, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    }, reps, stream).event_us;
    // (b) the switch: the task's exclusive pages in, then the gather.
    t = TimeGpu([&](int i) {
      const int set = i % sets;
      if (ex_floats)
        CUDA_CHECK(cudaMemcpyAsync(dev[set].exclusive, task_block, ex_floats * sizeof(float),
                                   cudaMemcpyHostToDevice, stream));
      gather(LaunchPageGather, set);
    }, reps, stream);
    r.switch_ev = t.event_us;
    r.switch_host = t.host_us;
    // (b') the switch overlapped: shared pages gathered while the exclusive
    // pages are copied in on a second stream, then the exclusive pages.
    auto overlapped = [&](int set) {
      const Problem& q = problems[set];
      const DeviceSet& d = dev[set];
      CUDA_CHECK(cudaEventRecord(fork, stream));
      CUDA_CHECK(cudaStreamWaitEvent(copy_stream, fork, 0));
      if (ex_floats)
        CUDA_CHECK(cudaMemcpyAsync(d.exclusive, task_block, ex_floats * sizeof(float),
                                   cudaMemcpyHostToDevice, copy_stream));
      CUDA_CHECK(cudaEventRecord(copied, copy_stream));
      CUDA_CHECK(weightsep::LaunchPageGatherPages(d.pool, d.exclusive, d.table, q.num_shared,
                                                  q.page_size, q.num_pages, q.num_weights, d.out,
                                                  stream, weightsep::PageSelect::kShared));
      CUDA_CHECK(cudaStreamWaitEvent(stream, copied, 0));
      CUDA_CHECK(weightsep::LaunchPageGatherPages(d.pool, d.exclusive, d.table, q.num_shared,
                                                  q.page_size, q.num_pages, q.num_weights, d.out,
                                                  stream, weightsep::PageSelect::kExclusive));
    };
    t = TimeGpu([&](int i) { overlapped(i % sets); }, reps, stream);
    r.overlap_ev = t.event_us;
    r.overlap_host = t.host_us;
    // (b'') the switch zero-copy: one launch that reads the task's exclusive
    // pages straight from the pinned (mapped) host store over PCIe while the
    // other warps gather shared pages.
    float* mapped_store = nullptr;
    CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped_store), store, 0));
    const float* mapped_block = mapped_store + ex_floats;
    auto zero_copy = [&](int set) {
      const Problem& q = problems[set];
      const DeviceSet& d = dev[set];
      CUDA_CHECK(LaunchPageGather(d.pool, mapped_block, d.table, q.num_shared, q.page_size,
                                  q.num_pages, q.num_weights, d.out, stream));
    };
    t = TimeGpu([&](int i) { zero_copy(i % sets); }, reps, stream);
    r.zero_ev = t.event_us;
    r.zero_host = t.host_us;
    ++checks;
    if (const int64_t bad = CheckRun(Reference(p), dev[0].out, [&] { zero_copy(0); }, stream)) {
      ++failures;
      std::printf("FAIL zero-copy switch n=%lld: %lld wrong\n", (long long)n, (long long)bad);
    }
    {  // correctness of the overlapped switch on fresh exclusive values
      CUDA_CHECK(cudaMemsetAsync(dev[0].exclusive, 0xFF, ex_floats * sizeof(float), stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      ++checks;
      if (const int64_t bad = CheckRun(Reference(p), dev[0].out, [&] { overlapped(0); }, stream)) {
        ++failures;
        std::printf("FAIL overlapped switch n=%lld: %lld wrong\n", (long long)n, (long long)bad);
      }
    }
    // Correctness after the timed switches: set 0 was filled from the host store.
    ++checks;
    if (const int64_t bad = CheckOnce(p, dev[0], LaunchPageGather, stream)) {
      ++failures;
      std::printf("FAIL after timing n=%lld: %lld wrong\n", (long long)n, (long long)bad);
    }
    // (c) whole network host -> device.
    const std::vector<float> net = Reference(p);
    float* pinned = nullptr;
    CUDA_CHECK(cudaMallocHost(&pinned, n * sizeof(float)));
    std::memcpy(pinned, net.data(), n * sizeof(float));
    std::vector<float> pageable(net);
    float* dnet = nullptr;
    CUDA_CHECK(cudaMalloc(&dnet, n * sizeof(float)));
    t = TimeGpu([&](int) {
      CUDA_CHECK(cudaMemcpyAsync(dnet, pinned, n * sizeof(float), cudaMemcpyHostToDevice, stream));
    }, reps, stream);
    r.pinned_ev = t.event_us;
    r.pinned_host = t.host_us;
    r.pageable_host = TimeGpu([&](int) {
      CUDA_CHECK(cudaMemcpyAsync(dnet, pageable.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
    }, reps, stream).host_us;
    // (d) whole network from a file.
    const FileTiming ft = TimeFile(data_dir, net, pinned, dnet, std::min(reps, 40), stream);
    r.file_warm = ft.warm_us;
    r.file_cold = ft.cold_us;
    r.file_note = ft.note;
    CUDA_CHECK(cudaFree(dnet));
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaFreeHost(store));
    for (DeviceSet& d : dev) Free(d);
    rows.push_back(r);
  }
  CUDA_CHECK(cudaGetLastError());

  gpu_check::PrintChecks(checks, failures);
  std::printf("\nPageGather, page size 512, ~7%% exclusive pages, medians of %d calls, times in us\n", reps);
  std::printf("ev = CUDA events around one call; host = host clock around launch + stream sync;\n"
              "batch = events around 20 back-to-back calls, per call. Calls rotate among 'sets'\n"
              "input sets (spanning 2x L2 when one set fits in it); hot = one set repeated.\n"
              "GB/s = (bytes read + written) / time. d2d = cudaMemcpy device->device, same bytes.\n\n");
  std::printf("(a) gather\n%10s %4s | %7s %7s %7s %7s | %7s %7s | %7s %7s | %7s\n", "weights", "sets",
              "ev", "host", "batch", "hot", "GB/s ev", "GB/s bt", "naiveEv", "naiveHo", "d2d ev");
  for (const Row& r : rows) {
    const double bytes = 2.0 * r.n * sizeof(float);
    std::printf("%10lld %4d | %7.2f %7.2f %7.2f %7.2f | %7.0f %7.0f | %7.2f %7.2f | %7.2f\n",
                (long long)r.n, r.sets, r.gather_ev, r.gather_host, r.gather_batch, r.gather_hot,
                bytes / (r.gather_ev * 1e3), bytes / (r.gather_batch * 1e3), r.naive_ev,
                r.naive_host, r.d2d_ev);
  }
  std::printf("\nkernel variants (event us, rotated): float4s in flight per lane per step\n");
  std::printf("%10s | %7s %7s %7s\n", "weights", "x1", "x2", "x4");
  for (const Row& r : rows)
    std::printf("%10lld | %7.2f %7.2f %7.2f\n", (long long)r.n, r.u1, r.u2, r.u4);
  std::printf("\n(b) WS switch = exclusive pages host(pinned)->device + gather; overlapped = shared\n"
              "pages gathered during the copy (2 streams); zero-copy = one gather reading the\n"
              "exclusive pages from mapped pinned host memory\n");
  std::printf("%10s | %7s %7s | %7s %7s | %7s %7s\n", "weights", "ev", "host", "ovl ev",
              "ovl host", "zc ev", "zc host");
  for (const Row& r : rows)
    std::printf("%10lld | %7.2f %7.2f | %7.2f %7.2f | %7.2f %7.2f\n", (long long)r.n,
                r.switch_ev, r.switch_host, r.overlap_ev, r.overlap_host, r.zero_ev,
                r.zero_host);
  std::printf("\n(c, d) baselines: whole network to the device; ratio = baseline host / WS switch host\n");
  std::printf("%10s | %7s %8s %8s %9s %9s | %6s %6s %6s %6s  %s\n", "weights", "pin ev",
              "pin host", "pageable", "file warm", "file cold", "x pin", "x page", "x warm",
              "x cold", "note");
  for (const Row& r : rows) {
    const double s = r.switch_host;
    std::printf("%10lld | %7.1f %8.1f %8.1f %9.1f %9.1f | %6.2f %6.2f %6.2f %6.2f  %s\n",
                (long long)r.n, r.pinned_ev, r.pinned_host, r.pageable_host, r.file_warm,
                r.file_cold, r.pinned_host / s, r.pageable_host / s, r.file_warm / s,
                r.file_cold / s, r.file_note.c_str());
  }
  CUDA_CHECK(cudaEventDestroy(fork));
  CUDA_CHECK(cudaEventDestroy(copied));
  CUDA_CHECK(cudaStreamDestroy(copy_stream));
  CUDA_CHECK(cudaStreamDestroy(stream));
  return gpu_check::Verdict(failures);
}
