// Standalone check and benchmark of the PageGatherQuantized CUDA kernel, no TensorFlow.
//
// Includes the very kernel sources that the TensorFlow ops link
// (cc/kernels/page_gather_quantized.cu and, for the float32 comparison,
// cc/kernels/page_gather.cu), then:
// 1. checks the quantized kernel bit for bit against a CPU reference, for
//    bits 8 and 4, on many shapes (S odd with bits 8 only, P = 0, E = 0, the
//    last page partial, random tables with repeats and tables using every
//    row), with random bytes (so -128 and the -8 nibble occur), zero,
//    negative and subnormal scales; every launch variant and a misaligned
//    store; the output poisoned before each run, a guard zone after it;
// 2. times, for 65,536 / 1,048,576 / 16,777,216 weights (S = 512, ~7%
//    exclusive pages, values N(0, 0.05) quantized per page), the float32,
//    int8 and int4 gathers (device-resident pool and exclusive pages) and the
//    switches: the task's exclusive pages (and scales) copied host (pinned) to
//    device with one cudaMemcpyAsync, then the gather; and zero-copy switches
//    (the gather reads the exclusive pages from mapped pinned host memory).
// Times are medians of --reps calls after warm-up, by CUDA events and by host
// clock around launch + sync; calls rotate among input sets spanning twice
// the L2 when one set fits in it. Prints tables last; exits non-zero if any
// check fails.
//
// Build and run: make -C custom_ops gpu_check_quantized && ./custom_ops/gpu_check_quantized
// Flags: --reps N (default 200)

#include <algorithm>
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
#include "cc/kernels/page_gather_quantized.cu"
#include "gpu_check_common.cuh"

namespace {

using gpu_check::CheckRun;
using gpu_check::kGuard;
using gpu_check::MakeProblem;
using gpu_check::Problem;
using gpu_check::TimeBatched;
using gpu_check::TimeGpu;
using gpu_check::Timing;
namespace pqc = weightsep::page_gather_quantized_cuda;

using QLauncher = cudaError_t (*)(const uint8_t*, const float*, const uint8_t*, const float*,
                                  const int32_t*, int, int, int64_t, int64_t, float*,
                                  cudaStream_t);

int RowBytes(int page_size, int bits) { return bits == 8 ? page_size : page_size / 2; }

size_t Round16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// A task over quantized pages: rows of RowBytes bytes, one float scale per row.
struct QProblem {
  int64_t num_weights = 0;
  int page_size = 0;
  int64_t num_pages = 0;
  int num_shared = 0;
  int num_exclusive = 0;
  int bits = 8;
  std::vector<uint8_t> pool, exclusive;
  std::vector<float> pool_scale, exclusive_scale;
  std::vector<int32_t> table;
};

// The CPU reference, independent of the kernel's chunked decoding: value j of
// a row is byte j (bits 8) or nibble j % 2 of byte j / 2 (bits 4), as a signed
// number; a subnormal scale counts as a zero of its sign; one float multiply.
float RefScale(float scale) {
  uint32_t b;
  std::memcpy(&b, &scale, 4);
  if (std::fpclassify(scale) == FP_SUBNORMAL) b &= 0x80000000u;
  std::memcpy(&scale, &b, 4);
  return scale;
}

int RefValue(const uint8_t* row, int j, int bits) {
  if (bits == 8) return static_cast<int8_t>(row[j]);
  const int nibble = j % 2 ? row[j / 2] >> 4 : row[j / 2] & 0xF;
  return nibble >= 8 ? nibble - 16 : nibble;
}

std::vector<float> Reference(const QProblem& p) {
  std::vector<float> out(p.num_weights);
  const int rb = RowBytes(p.page_size, p.bits);
  for (int64_t i = 0; i < p.num_pages; ++i) {
    const int e = p.table[i];
    const bool on_pool = e < p.num_shared;
    const int row = on_pool ? e : e - p.num_shared;
    const uint8_t* src = (on_pool ? p.pool.data() : p.exclusive.data()) + static_cast<size_t>(row) * rb;
    const float scale = RefScale((on_pool ? p.pool_scale : p.exclusive_scale)[row]);
    const int64_t n = std::min<int64_t>(p.page_size, p.num_weights - i * p.page_size);
    for (int64_t j = 0; j < n; ++j)
      out[i * p.page_size + j] = static_cast<float>(RefValue(src, static_cast<int>(j), p.bits)) * scale;
  }
  return out;
}

// Random bytes and scales of every kind; rep 0 draws table entries with
// repeats, rep 1 cycles through a permutation of all rows.
QProblem RandomQProblem(int64_t n, int s, int num_shared, int num_exclusive, int bits, int rep,
                        std::mt19937_64& rng) {
  QProblem p;
  p.num_weights = n;
  p.page_size = s;
  p.num_pages = (n + s - 1) / s;
  p.num_shared = num_shared;
  p.num_exclusive = num_exclusive;
  p.bits = bits;
  const int rb = RowBytes(s, bits);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> unit(0.5f, 1.0f);
  std::uniform_int_distribution<int> exponent(-30, 10), kind(0, 99);
  auto fill = [&](std::vector<uint8_t>& q, std::vector<float>& scale, int rows) {
    q.resize(static_cast<size_t>(rows) * rb);
    scale.resize(rows);
    for (uint8_t& b : q) b = static_cast<uint8_t>(byte(rng));
    for (int r = 0; r < rows; ++r) {
      const int k = kind(rng);
      if (k < 5) {  // a page of zeros, as a quantizer writes it
        scale[r] = 0.0f;
        std::fill(q.begin() + static_cast<size_t>(r) * rb, q.begin() + static_cast<size_t>(r + 1) * rb, 0);
      } else if (k < 10) {
        scale[r] = k % 2 ? 0.0f : -0.0f;
      } else if (k < 15) {
        scale[r] = std::ldexp(unit(rng), -130);  // subnormal
      } else if (k < 18) {
        scale[r] = -std::ldexp(unit(rng), exponent(rng));
      } else {
        scale[r] = std::ldexp(unit(rng), exponent(rng));
      }
    }
    if (rows > 0) q[0] = bits == 8 ? 0x80 : 0x88;  // -128, and -8 in both nibbles
  };
  fill(p.pool, p.pool_scale, num_shared);
  fill(p.exclusive, p.exclusive_scale, num_exclusive);
  const int rows = num_shared + num_exclusive;
  p.table.resize(p.num_pages);
  if (rep == 0) {
    std::uniform_int_distribution<int> entry(0, rows - 1);
    for (int32_t& e : p.table) e = entry(rng);
  } else {
    std::vector<int32_t> perm(rows);
    for (int i = 0; i < rows; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t i = 0; i < p.num_pages; ++i) p.table[i] = perm[i % rows];
  }
  return p;
}

// Per-page symmetric quantization of float rows, zero-point 0, as the store does.
void QuantizeRows(const std::vector<float>& rows, int s, int bits, std::vector<uint8_t>* q,
                  std::vector<float>* scale) {
  const int num_rows = static_cast<int>(rows.size() / s);
  const int qmax = bits == 8 ? 127 : 7;
  const int rb = RowBytes(s, bits);
  q->assign(static_cast<size_t>(num_rows) * rb, 0);
  scale->assign(num_rows, 0.0f);
  for (int r = 0; r < num_rows; ++r) {
    const float* w = &rows[static_cast<size_t>(r) * s];
    float amax = 0;
    for (int j = 0; j < s; ++j) amax = std::max(amax, std::fabs(w[j]));
    if (amax == 0) continue;
    const float sc = amax / qmax;
    (*scale)[r] = sc;
    uint8_t* dst = &(*q)[static_cast<size_t>(r) * rb];
    for (int j = 0; j < s; ++j) {
      const int v = std::max(-qmax, std::min(qmax, static_cast<int>(std::lrint(w[j] / sc))));
      if (bits == 8)
        dst[j] = static_cast<uint8_t>(static_cast<int8_t>(v));
      else
        dst[j / 2] |= static_cast<uint8_t>((v & 0xF) << (4 * (j % 2)));
    }
  }
}

QProblem QuantizeProblem(const Problem& f, int bits) {
  QProblem p;
  p.num_weights = f.num_weights;
  p.page_size = f.page_size;
  p.num_pages = f.num_pages;
  p.num_shared = f.num_shared;
  p.num_exclusive = f.num_exclusive;
  p.bits = bits;
  p.table = f.table;
  QuantizeRows(f.pool, f.page_size, bits, &p.pool, &p.pool_scale);
  QuantizeRows(f.exclusive, f.page_size, bits, &p.exclusive, &p.exclusive_scale);
  return p;
}

// Device buffers of one quantized set. The exclusive block is laid out as the
// switch brings it in: the scales (padded to 16 bytes), then the rows.
struct QDeviceSet {
  uint8_t* pool = nullptr;
  float* pool_scale = nullptr;
  uint8_t* block = nullptr;  // exclusive scales + rows
  const float* exclusive_scale = nullptr;
  const uint8_t* exclusive = nullptr;
  size_t block_bytes = 0;
  int32_t* table = nullptr;
  float* out = nullptr;
};

std::vector<uint8_t> ExclusiveBlock(const QProblem& p) {
  const size_t scale_bytes = Round16(p.exclusive_scale.size() * sizeof(float));
  std::vector<uint8_t> block(scale_bytes + p.exclusive.size(), 0);
  std::memcpy(block.data(), p.exclusive_scale.data(), p.exclusive_scale.size() * sizeof(float));
  std::memcpy(block.data() + scale_bytes, p.exclusive.data(), p.exclusive.size());
  return block;
}

// pool_offset > 0 places the pool that many bytes past an aligned address.
QDeviceSet Upload(const QProblem& p, int pool_offset = 0) {
  QDeviceSet d;
  CUDA_CHECK(cudaMalloc(&d.pool, p.pool.size() + pool_offset + 1));
  d.pool += pool_offset;
  CUDA_CHECK(cudaMemcpy(d.pool, p.pool.data(), p.pool.size(), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMalloc(&d.pool_scale, p.pool_scale.size() * sizeof(float) + 4));
  CUDA_CHECK(cudaMemcpy(d.pool_scale, p.pool_scale.data(), p.pool_scale.size() * sizeof(float),
                        cudaMemcpyHostToDevice));
  if (p.num_exclusive > 0) {
    const std::vector<uint8_t> block = ExclusiveBlock(p);
    d.block_bytes = block.size();
    CUDA_CHECK(cudaMalloc(&d.block, block.size()));
    CUDA_CHECK(cudaMemcpy(d.block, block.data(), block.size(), cudaMemcpyHostToDevice));
    d.exclusive_scale = reinterpret_cast<const float*>(d.block);
    d.exclusive = d.block + Round16(p.exclusive_scale.size() * sizeof(float));
  }
  CUDA_CHECK(cudaMalloc(&d.table, p.table.size() * sizeof(int32_t) + 4));
  CUDA_CHECK(cudaMemcpy(d.table, p.table.data(), p.table.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMalloc(&d.out, (p.num_weights + kGuard) * sizeof(float)));
  return d;
}

void Free(QDeviceSet& d, int pool_offset = 0) {
  CUDA_CHECK(cudaFree(d.pool - pool_offset));
  CUDA_CHECK(cudaFree(d.pool_scale));
  if (d.block) CUDA_CHECK(cudaFree(d.block));
  CUDA_CHECK(cudaFree(d.table));
  CUDA_CHECK(cudaFree(d.out));
  d = QDeviceSet();
}

int64_t CheckQ(const QProblem& p, const std::vector<float>& ref, const QDeviceSet& d,
               QLauncher launch, cudaStream_t stream) {
  return CheckRun(ref, d.out, [&] {
    CUDA_CHECK(launch(d.pool, d.pool_scale, d.exclusive, d.exclusive_scale, d.table,
                      p.num_shared, p.page_size, p.num_pages, p.num_weights, d.out, stream));
  }, stream);
}

template <int kBits>
cudaError_t Main(const uint8_t* s, const float* ss, const uint8_t* e, const float* es,
                 const int32_t* t, int P, int S, int64_t np, int64_t n, float* out,
                 cudaStream_t st) {
  return weightsep::LaunchPageGatherQuantized(s, ss, e, es, t, P, S, np, n, kBits, out, st);
}

struct Variant {
  const char* name;
  QLauncher launch[2];  // [bits 8, bits 4]
  bool needs_s4;        // the vector kernels need S % 4 == 0 (the launcher checks it)
};

const Variant kVariants[] = {
    {"launcher", {Main<8>, Main<4>}, false},
    {"vec x1", {pqc::LaunchVec4<8, 1>, pqc::LaunchVec4<4, 1>}, true},
    {"vec x2", {pqc::LaunchVec4<8, 2>, pqc::LaunchVec4<4, 2>}, true},
    {"vec x4", {pqc::LaunchVec4<8, 4>, pqc::LaunchVec4<4, 4>}, true},
    {"scalar", {pqc::LaunchScalar<8>, pqc::LaunchScalar<4>}, false},
};

// One row of the timing tables: one kind (f32, int8, int4) at one size.
struct KindRow {
  int64_t n = 0;
  const char* kind = "";
  int sets = 0;
  double gather_ev = 0, gather_host = 0, gather_batch = 0, gather_hot = 0;
  double bytes = 0;          // gather: bytes read + written
  double h2d_bytes = 0;      // switch: bytes copied host to device
  double switch_ev = 0, switch_host = 0, zc_ev = 0, zc_host = 0, copy_ev = 0;
  double v1 = 0, v2 = 0, v4 = 0, vs = 0;  // variants, event us
};

struct SizeRow {
  int64_t n = 0;
  double d2d_ev = 0, memset_ev = 0;
};

// One kind (f32, int8, int4) at one size as the timings see it: `sets` input
// sets; block(set) is the set's device block that a switch fills with the
// task's exclusive rows (and scales); gather(set, rows) gathers set `set`
// reading the exclusive rows from `rows` (its own block, or mapped host memory).
struct Kind {
  int sets;
  std::function<uint8_t*(int)> block;
  std::function<void(int, const uint8_t*)> gather;
};

// The gather with each set's exclusive rows on the device: rotated among the
// sets (events and host clock), one set repeated (hot), back to back (batch).
void TimeGather(const Kind& k, int reps, cudaStream_t stream, KindRow* r) {
  auto rotated = [&](int i) { k.gather(i % k.sets, k.block(i % k.sets)); };
  const Timing t = TimeGpu(rotated, reps, stream);
  r->gather_ev = t.event_us;
  r->gather_host = t.host_us;
  r->gather_hot = TimeGpu([&](int) { k.gather(0, k.block(0)); }, reps, stream).event_us;
  r->gather_batch = TimeBatched(rotated, reps, stream);
}

// The switch: `bytes` of exclusive rows copied from the middle block of the
// pinned (mapped) host store to the set's block, alone and followed by the
// gather, and the zero-copy gather reading them from mapped host memory. Then
// checks the switch (set 0's block poisoned first, so the copy must refill it)
// and the zero-copy gather against ref, set 0's output being out0.
void TimeSwitch(const Kind& k, uint8_t* store, size_t bytes, const std::vector<float>& ref,
                float* out0, int reps, cudaStream_t stream, KindRow* r, int* checks,
                int* failures) {
  const uint8_t* task = store + bytes;
  auto copy_in = [&](int set) {
    CUDA_CHECK(cudaMemcpyAsync(k.block(set), task, bytes, cudaMemcpyHostToDevice, stream));
  };
  r->h2d_bytes = static_cast<double>(bytes);
  r->copy_ev = TimeGpu([&](int i) {
    if (bytes) copy_in(i % k.sets);
  }, reps, stream).event_us;
  Timing t = TimeGpu([&](int i) {
    const int set = i % k.sets;
    if (bytes) copy_in(set);
    k.gather(set, k.block(set));
  }, reps, stream);
  r->switch_ev = t.event_us;
  r->switch_host = t.host_us;
  uint8_t* mapped_store = nullptr;
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped_store), store, 0));
  const uint8_t* zc = mapped_store + bytes;
  t = TimeGpu([&](int i) { k.gather(i % k.sets, zc); }, reps, stream);
  r->zc_ev = t.event_us;
  r->zc_host = t.host_us;
  CUDA_CHECK(cudaMemsetAsync(k.block(0), 0xFF, bytes, stream));
  ++*checks;
  if (const int64_t bad = CheckRun(ref, out0, [&] {
        copy_in(0);
        k.gather(0, k.block(0));
      }, stream)) {
    ++*failures;
    std::printf("FAIL %s switch n=%lld: %lld wrong\n", r->kind, (long long)r->n, (long long)bad);
  }
  ++*checks;
  if (const int64_t bad = CheckRun(ref, out0, [&] { k.gather(0, zc); }, stream)) {
    ++*failures;
    std::printf("FAIL %s zero-copy n=%lld: %lld wrong\n", r->kind, (long long)r->n, (long long)bad);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 200;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else { std::fprintf(stderr, "usage: %s [--reps N]\n", argv[0]); return 2; }
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.1f MB, CUDA runtime %d\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize / 1e6, CUDART_VERSION);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937_64 rng(20220322);

  // 1. Correctness.
  struct Case { int64_t n; int s, p, e; };
  const Case cases[] = {
      {65536, 512, 140, 10},   {65536 + 37, 512, 140, 10}, {1000, 500, 2, 1},
      {10007, 510, 15, 6},     {4096, 64, 60, 8},          {3000, 256, 12, 0},
      {12345, 4, 3000, 200},   {1, 512, 1, 0},             {777, 3, 200, 70},
      {777, 6, 100, 40},       {999, 2, 400, 100},         {100, 8, 0, 13},
      {513, 512, 2, 1},        {2047, 1024, 1, 1},         {4099, 12, 300, 50},
      {1 << 20, 512, 2200, 150}, {(1 << 24) + 3, 512, 33000, 2300},
  };
  int failures = 0, checks = 0;
  for (const Case& c : cases) {
    for (int bits : {8, 4}) {
      if (bits == 4 && c.s % 2) continue;  // int4 pages pack two values per byte
      for (int rep = 0; rep < 2; ++rep) {
        const QProblem p = RandomQProblem(c.n, c.s, c.p, c.e, bits, rep, rng);
        const std::vector<float> ref = Reference(p);
        QDeviceSet d = Upload(p);
        for (const Variant& v : kVariants) {
          if (v.needs_s4 && c.s % 4) continue;
          ++checks;
          if (const int64_t bad = CheckQ(p, ref, d, v.launch[bits == 4], stream)) {
            ++failures;
            std::printf("FAIL %s bits=%d n=%lld S=%d P=%d E=%d rep=%d: %lld wrong\n", v.name, bits,
                        (long long)c.n, c.s, c.p, c.e, rep, (long long)bad);
          }
        }
        Free(d);
        // A pool one byte off alignment: the launcher must take the scalar path.
        QDeviceSet m = Upload(p, 1);
        ++checks;
        if (const int64_t bad = CheckQ(p, ref, m, kVariants[0].launch[bits == 4], stream)) {
          ++failures;
          std::printf("FAIL misaligned bits=%d n=%lld S=%d: %lld wrong\n", bits, (long long)c.n,
                      c.s, (long long)bad);
        }
        Free(m, 1);
      }
    }
  }
  {  // The launcher refuses what it cannot decode.
    ++checks;
    if (weightsep::LaunchPageGatherQuantized(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 3, 1,
                                             3, 4, nullptr, stream) != cudaErrorInvalidValue ||
        weightsep::LaunchPageGatherQuantized(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 1,
                                             4, 2, nullptr, stream) != cudaErrorInvalidValue) {
      ++failures;
      std::printf("FAIL: the launcher accepted bits=4 with S odd, or bits=2\n");
    }
  }
  std::printf("correctness: %d checks, %d failed\n", checks, failures);

  // 2. Timing, page size 512, ~7% exclusive pages.
  std::vector<KindRow> rows;
  std::vector<SizeRow> sizes_out;
  const int64_t sizes[] = {65536, 1 << 20, 1 << 24};
  for (int64_t n : sizes) {
    // Enough problems for the kind whose set is smallest (int4) to span 2x L2.
    const Problem probe = MakeProblem(n, 512, 0.07, rng);
    auto sets_for = [&](size_t set_bytes) {
      if (set_bytes >= static_cast<size_t>(prop.l2CacheSize)) return 1;
      return static_cast<int>(std::min<size_t>(512, (2 * prop.l2CacheSize + set_bytes - 1) / set_bytes));
    };
    const size_t f_set = (probe.pool.size() + probe.exclusive.size() + n) * sizeof(float);
    const size_t q8_set = probe.pool.size() + probe.exclusive.size() + n * sizeof(float);
    const size_t q4_set = (probe.pool.size() + probe.exclusive.size()) / 2 + n * sizeof(float);
    const int f_sets = sets_for(f_set), q8_sets = sets_for(q8_set), q4_sets = sets_for(q4_set);
    std::vector<Problem> problems{probe};
    while (static_cast<int>(problems.size()) < std::max({f_sets, q8_sets, q4_sets}))
      problems.push_back(MakeProblem(n, 512, 0.07, rng));
    std::vector<gpu_check::DeviceSet> fdev;
    for (int i = 0; i < f_sets; ++i) fdev.push_back(gpu_check::Upload(problems[i]));
    std::vector<QProblem> q8, q4;
    std::vector<QDeviceSet> q8dev, q4dev;
    for (int i = 0; i < q8_sets; ++i) { q8.push_back(QuantizeProblem(problems[i], 8)); q8dev.push_back(Upload(q8.back())); }
    for (int i = 0; i < q4_sets; ++i) { q4.push_back(QuantizeProblem(problems[i], 4)); q4dev.push_back(Upload(q4.back())); }
    const Problem& p = problems[0];
    const int64_t np = p.num_pages;

    SizeRow sr;
    sr.n = n;
    // Floors: a device-to-device copy of the float gather's bytes, and writing
    // the output alone (what the quantized gathers cannot avoid).
    sr.d2d_ev = TimeGpu([&](int i) {
      const gpu_check::DeviceSet& d = fdev[i % f_sets];
      CUDA_CHECK(cudaMemcpyAsync(d.out, d.pool, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    }, reps, stream).event_us;
    sr.memset_ev = TimeGpu([&](int i) {
      CUDA_CHECK(cudaMemsetAsync(fdev[i % f_sets].out, 0, n * sizeof(float), stream));
    }, reps, stream).event_us;
    sizes_out.push_back(sr);

    // Pinned host stores: three tasks' blocks, this task's the middle one.
    const size_t f_block = p.exclusive.size() * sizeof(float);
    const std::vector<uint8_t> b8 = ExclusiveBlock(q8[0]), b4 = ExclusiveBlock(q4[0]);
    auto pinned_store = [&](const void* block, size_t bytes) {
      uint8_t* store = nullptr;
      CUDA_CHECK(cudaHostAlloc(&store, std::max<size_t>(16, 3 * bytes), cudaHostAllocMapped));
      for (size_t i = 0; i < 3 * bytes; ++i) store[i] = static_cast<uint8_t>(i * 7);
      std::memcpy(store + bytes, block, bytes);
      return store;
    };
    uint8_t* f_store = pinned_store(p.exclusive.data(), f_block);
    uint8_t* s8_store = pinned_store(b8.data(), b8.size());
    uint8_t* s4_store = pinned_store(b4.data(), b4.size());

    // float32
    {
      KindRow r;
      r.n = n;
      r.kind = "f32";
      r.sets = f_sets;
      const Kind f32{
          f_sets, [&](int set) { return reinterpret_cast<uint8_t*>(fdev[set].exclusive); },
          [&](int set, const uint8_t* rows) {
            const gpu_check::DeviceSet& d = fdev[set];
            CUDA_CHECK(weightsep::LaunchPageGather(d.pool, reinterpret_cast<const float*>(rows),
                                                   d.table, p.num_shared, 512, np, n, d.out,
                                                   stream));
          }};
      TimeGather(f32, reps, stream, &r);
      // Each output float read once from its page, each table entry once, each output written once.
      r.bytes = 2.0 * n * sizeof(float) + np * sizeof(int32_t);
      TimeSwitch(f32, f_store, f_block, gpu_check::Reference(p), fdev[0].out, reps, stream, &r,
                 &checks, &failures);
      rows.push_back(r);
    }
    // int8 and int4
    for (int bits : {8, 4}) {
      std::vector<QProblem>& qs = bits == 8 ? q8 : q4;
      std::vector<QDeviceSet>& qd = bits == 8 ? q8dev : q4dev;
      const size_t scale_bytes = Round16(p.num_exclusive * sizeof(float));
      KindRow r;
      r.n = n;
      r.kind = bits == 8 ? "int8" : "int4";
      r.sets = static_cast<int>(qd.size());
      // The gather of set `set` by launcher l, the exclusive scales then rows at ex_block.
      auto gather_with = [&](QLauncher l, int set, const uint8_t* ex_block) {
        const QDeviceSet& d = qd[set];
        CUDA_CHECK(l(d.pool, d.pool_scale, ex_block ? ex_block + scale_bytes : nullptr,
                     reinterpret_cast<const float*>(ex_block), d.table, p.num_shared, 512, np, n,
                     d.out, stream));
      };
      const QLauncher main_launch = bits == 8 ? Main<8> : Main<4>;
      const Kind q{r.sets, [&](int set) { return qd[set].block; },
                   [&](int set, const uint8_t* ex_block) { gather_with(main_launch, set, ex_block); }};
      TimeGather(q, reps, stream, &r);
      // Each page's values up to n (n is a multiple of S here), each page's
      // scale and table entry once; each output float written once.
      r.bytes = static_cast<double>(n) * bits / 8 + 2.0 * np * 4 + 4.0 * n;
      for (int k = 1; k <= 4; ++k) {
        const QLauncher l = kVariants[k].launch[bits == 4];
        const double ev = TimeGpu([&](int i) { gather_with(l, i % q.sets, qd[i % q.sets].block); }, reps, stream).event_us;
        if (k == 1) r.v1 = ev;
        if (k == 2) r.v2 = ev;
        if (k == 3) r.v4 = ev;
        if (k == 4) r.vs = ev;
      }
      TimeSwitch(q, bits == 8 ? s8_store : s4_store, bits == 8 ? b8.size() : b4.size(),
                 Reference(qs[0]), qd[0].out, reps, stream, &r, &checks, &failures);
      rows.push_back(r);
    }
    CUDA_CHECK(cudaFreeHost(f_store));
    CUDA_CHECK(cudaFreeHost(s8_store));
    CUDA_CHECK(cudaFreeHost(s4_store));
    for (gpu_check::DeviceSet& d : fdev) gpu_check::Free(d);
    for (QDeviceSet& d : q8dev) Free(d);
    for (QDeviceSet& d : q4dev) Free(d);
  }
  CUDA_CHECK(cudaGetLastError());

  gpu_check::PrintChecks(checks, failures);
  std::printf("\nPageGather (f32) and PageGatherQuantized (int8, int4), page size 512, ~7%% exclusive pages,\n"
              "medians of %d calls, times in us. ev = CUDA events around one call; host = host clock\n"
              "around launch + stream sync; batch = events around 20 back-to-back calls, per call;\n"
              "calls rotate among 'sets' input sets (spanning 2x L2 when one fits in it); hot = one set.\n"
              "MB = bytes read + written by the gather, each counted once: f32 8n + 4 n_p (table);\n"
              "int8 n + 4n + 8 n_p (values, output, scale and table entry per page); int4 n/2 + 4n + 8 n_p.\n\n",
              reps);
  std::printf("(a) gather\n%10s %5s %4s | %7s %7s %7s %7s | %7s | %7s %7s | %7s %7s\n", "weights", "kind",
              "sets", "ev", "host", "batch", "hot", "MB", "GB/s ev", "GB/s bt", "x f32 ev", "x f32 bt");
  for (const KindRow& r : rows) {
    const KindRow& f = *std::find_if(rows.begin(), rows.end(), [&](const KindRow& x) {
      return x.n == r.n && !std::strcmp(x.kind, "f32");
    });
    std::printf("%10lld %5s %4d | %7.2f %7.2f %7.2f %7.2f | %7.2f | %7.0f %7.0f | %7.2f %7.2f\n",
                (long long)r.n, r.kind, r.sets, r.gather_ev, r.gather_host, r.gather_batch,
                r.gather_hot, r.bytes / 1e6, r.bytes / (r.gather_ev * 1e3),
                r.bytes / (r.gather_batch * 1e3), f.gather_ev / r.gather_ev,
                f.gather_batch / r.gather_batch);
  }
  std::printf("\nfloors (event us, rotated): d2d = cudaMemcpy device->device of 4n bytes (reads 4n,\n"
              "writes 4n); memset = cudaMemsetAsync of the 4n-byte output (writes only)\n");
  std::printf("%10s | %7s %7s\n", "weights", "d2d", "memset");
  for (const SizeRow& s : sizes_out)
    std::printf("%10lld | %7.2f %7.2f\n", (long long)s.n, s.d2d_ev, s.memset_ev);
  std::printf("\nquantized kernel variants (event us, rotated): chunks in flight per lane; scalar path\n");
  std::printf("%10s %5s | %7s %7s %7s %7s\n", "weights", "kind", "x1", "x2", "x4", "scalar");
  for (const KindRow& r : rows)
    if (std::strcmp(r.kind, "f32"))
      std::printf("%10lld %5s | %7.2f %7.2f %7.2f %7.2f\n", (long long)r.n, r.kind, r.v1, r.v2, r.v4, r.vs);
  std::printf("\n(b) switch = the task's exclusive pages (and their scales, one block) host(pinned)->device\n"
              "in one cudaMemcpyAsync, then the gather; copy = that copy alone; zero-copy = one gather\n"
              "reading the exclusive pages and scales from mapped pinned host memory.\n"
              "x f32 = f32 switch host / this switch host (same size, same run).\n");
  std::printf("%10s %5s | %9s | %7s | %7s %7s | %7s %7s | %6s\n", "weights", "kind", "H2D KB",
              "copy ev", "ev", "host", "zc ev", "zc host", "x f32");
  for (const KindRow& r : rows) {
    const KindRow& f = *std::find_if(rows.begin(), rows.end(), [&](const KindRow& x) {
      return x.n == r.n && !std::strcmp(x.kind, "f32");
    });
    std::printf("%10lld %5s | %9.1f | %7.2f | %7.2f %7.2f | %7.2f %7.2f | %6.2f\n", (long long)r.n,
                r.kind, r.h2d_bytes / 1e3, r.copy_ev, r.switch_ev, r.switch_host, r.zc_ev,
                r.zc_host, f.switch_host / r.switch_host);
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
  return gpu_check::Verdict(failures);
}
