// Fused global top-k magnitude selection on the GPU: radix select on the bits of |w|, reading every
// weight in place (no concatenated copy) and writing the masks directly. Same contract, same masks
// and same threshold as the CPU core (csrc/threshold.cpp), ties included.
//
// The key of |w| is its IEEE bit pattern without the sign: for non-negative floats it orders like
// the value. With only float32 tensors keys have 31 bits; any float64 tensor makes all keys 63-bit
// (float32 weights compared as exactly converted doubles). Digits of 11 bits, most significant
// first: each pass histograms, in shared memory, the kept keys that share the digits resolved so
// far; the host reads the 2048 counts and picks the next digit. Then one pass prunes every kept key
// below the threshold key T and, of those equal to T, the first ones in (tensor order, flat index):
// when only part of the ties goes, a counting pass gives each 4096-element chunk the number of ties
// before it, and a block scan orders the ties inside the chunk. Deterministic; no atomics decide
// anything but counts.
#include <cub/block/block_scan.cuh>

#include <cstring>
#include <limits>
#include <type_traits>

#include "common.cuh"

namespace lf {
namespace cuda {
namespace {

constexpr int kMaxDigitBits = 11;
constexpr std::int64_t kBins = std::int64_t{1} << kMaxDigitBits;
constexpr int kThreads = 256;
constexpr int kItems = 16;                            // per thread in the tie-ordered mark pass
constexpr std::int64_t kChunk = kThreads * kItems;  // elements per block there
constexpr unsigned kHistBlocksCap = 132 * 8;

template <class K>
struct KeyBits;
template <>
struct KeyBits<std::uint32_t> {
  static constexpr int bits = 31;
  static constexpr std::uint32_t inf = 0x7f800000u;
};
template <>
struct KeyBits<unsigned long long> {
  static constexpr int bits = 63;
  static constexpr unsigned long long inf = 0x7ff0000000000000ull;
};

template <class K, class E>
__device__ __forceinline__ K key_of(E v) {
  if constexpr (std::is_same_v<K, std::uint32_t>) {
    return __float_as_uint(v) & 0x7fffffffu;
  } else {
    return static_cast<unsigned long long>(__double_as_longlong(static_cast<double>(v))) & 0x7fffffffffffffffull;
  }
}

// Counts kept keys whose bits above `hi_shift` equal `prefix`, by their digit at `shift`. The first
// pass (hi_shift == KeyBits<K>::bits: every kept key) also records the first kept non-finite index.
template <class K, class E>
__global__ void hist_kernel(const E* __restrict__ w, const std::uint8_t* __restrict__ m, std::int64_t n, int shift,
                            int width, int hi_shift, K prefix, unsigned long long* __restrict__ hist,
                            unsigned long long* __restrict__ first_bad) {
  extern __shared__ unsigned int bins[];
  const int nb = 1 << width;
  for (int i = threadIdx.x; i < nb; i += blockDim.x) bins[i] = 0;
  __syncthreads();
  const bool first = hi_shift == KeyBits<K>::bits;
  const K digit_mask = (K(1) << width) - 1;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    if (!m[i]) continue;
    const K key = key_of<K>(w[i]);
    if (first) {
      if (key >= KeyBits<K>::inf) atomicMin(first_bad, static_cast<unsigned long long>(i));
    } else if ((key >> hi_shift) != prefix) {
      continue;
    }
    atomicAdd(&bins[(key >> shift) & digit_mask], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nb; i += blockDim.x)
    if (bins[i]) atomicAdd(&hist[i], static_cast<unsigned long long>(bins[i]));
}

// Prunes kept keys < t (or <= t when inclusive); adds the count to *pruned.
template <class K, class E>
__global__ void mark_kernel(const E* __restrict__ w, std::uint8_t* __restrict__ m, std::int64_t n, K t, bool inclusive,
                            unsigned long long* __restrict__ pruned) {
  __shared__ unsigned int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  unsigned int mine = 0;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    if (!m[i]) continue;
    const K key = key_of<K>(w[i]);
    if (key < t || (inclusive && key == t)) {
      m[i] = 0;
      ++mine;
    }
  }
  if (mine) atomicAdd(&count, mine);
  __syncthreads();
  if (threadIdx.x == 0 && count) atomicAdd(pruned, static_cast<unsigned long long>(count));
}

// Kept keys equal to t per chunk of kChunk elements.
template <class K, class E>
__global__ void tie_count_kernel(const E* __restrict__ w, const std::uint8_t* __restrict__ m, std::int64_t n, K t,
                                 unsigned long long* __restrict__ counts) {
  __shared__ unsigned int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * kChunk;
  const std::int64_t end = begin + kChunk < n ? begin + kChunk : n;
  unsigned int mine = 0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) mine += m[i] && key_of<K>(w[i]) == t;
  if (mine) atomicAdd(&count, mine);
  __syncthreads();
  if (threadIdx.x == 0) counts[blockIdx.x] = count;
}

// Prunes kept keys < t, and the kept keys == t whose global tie rank (ties before this chunk,
// `bases[chunk]`, plus the rank inside it) is below `take`. Thread i owns kItems consecutive
// elements, so a block scan of per-thread tie counts gives ranks in flat order.
template <class K, class E>
__global__ void mark_ties_kernel(const E* __restrict__ w, std::uint8_t* __restrict__ m, std::int64_t n, K t,
                                 const unsigned long long* __restrict__ bases, unsigned long long take,
                                 unsigned long long* __restrict__ pruned) {
  using Scan = cub::BlockScan<unsigned int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ unsigned int count;
  if (threadIdx.x == 0) count = 0;
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * kChunk + static_cast<std::int64_t>(threadIdx.x) * kItems;
  const std::int64_t end = begin + kItems < n ? begin + kItems : n;
  unsigned int ties = 0;
  for (std::int64_t i = begin; i < end; ++i) ties += m[i] && key_of<K>(w[i]) == t;
  unsigned int before = 0;
  Scan(scan_storage).ExclusiveSum(ties, before);
  __syncthreads();
  unsigned long long rank = bases[blockIdx.x] + before;
  unsigned int mine = 0;
  for (std::int64_t i = begin; i < end; ++i) {
    if (!m[i]) continue;
    const K key = key_of<K>(w[i]);
    if (key < t) {
      m[i] = 0;
      ++mine;
    } else if (key == t) {
      if (rank < take) {
        m[i] = 0;
        ++mine;
      }
      ++rank;
    }
  }
  if (mine) atomicAdd(&count, mine);
  __syncthreads();
  if (threadIdx.x == 0 && count) atomicAdd(pruned, static_cast<unsigned long long>(count));
}

unsigned hist_blocks(std::int64_t n) { return blocks_for(n, kThreads * 8, kHistBlocksCap); }
std::int64_t chunks_of(std::int64_t n) { return (n + kChunk - 1) / kChunk; }

// Calls f(E{}) with E the weight type of tensor t (with 32-bit keys every tensor is float32).
template <class F>
void with_elem(const DeviceTensorRef& t, F&& f) {
  if (t.dtype == 1) f(double{});
  else f(float{});
}

class Selector {
 public:
  Selector(const std::vector<DeviceTensorRef>& ts, unsigned long long* ws, cudaStream_t s)
      : ts_(ts), hist_(ws), first_bad_(ws + kBins), pruned_(ws + kBins + ts.size()),
        chunk_words_(ws + kBins + 2 * ts.size()), stream_(s) {}

  template <class K>
  ThresholdResult run(std::int64_t k) {
    ThresholdResult out;
    out.threshold = -std::numeric_limits<double>::infinity();
    out.pruned.assign(ts_.size(), 0);
    const std::size_t nt = ts_.size();
    K prefix = 0;
    unsigned long long need = static_cast<unsigned long long>(k), at_t = 0;
    std::vector<unsigned long long> h(kBins);
    bool first = true;
    for (int hi = KeyBits<K>::bits; hi > 0; ) {
      const int width = hi < kMaxDigitBits ? hi : kMaxDigitBits;
      const int shift = hi - width;
      check(cudaMemsetAsync(hist_, 0, sizeof(unsigned long long) << width, stream_), "memset");
      if (first && nt) check(cudaMemsetAsync(first_bad_, 0xff, nt * sizeof(unsigned long long), stream_), "memset");
      for (std::size_t i = 0; i < nt; ++i) {
        const DeviceTensorRef& t = ts_[i];
        if (t.numel == 0) continue;
        with_elem(t, [&](auto zero) {
          using E = decltype(zero);
          hist_kernel<K, E><<<hist_blocks(t.numel), kThreads, sizeof(unsigned int) << width, stream_>>>(
              dptr<const E>(t.weight), dptr<const std::uint8_t>(t.mask), t.numel, shift, width, hi, prefix, hist_,
              first_bad_ + i);
        });
        check_launch("prune_smallest histogram");
      }
      check(cudaMemcpyAsync(h.data(), hist_, sizeof(unsigned long long) << width, cudaMemcpyDeviceToHost, stream_), "copy");
      if (first) {
        std::vector<unsigned long long> bad(nt);
        if (nt) check(cudaMemcpyAsync(bad.data(), first_bad_, nt * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_), "copy");
        check(cudaStreamSynchronize(stream_), "prune_smallest histogram");
        for (std::size_t i = 0; i < nt; ++i) {
          if (bad[i] != ~0ull) {
            out.error = ThresholdResult::kNonFinite;
            out.error_tensor = static_cast<std::int64_t>(i);
            out.error_index = static_cast<std::int64_t>(bad[i]);
            out.error_value = value_at(ts_[i], out.error_index);
            return out;
          }
        }
        unsigned long long kept = 0;
        for (std::int64_t b = 0; b < (std::int64_t{1} << width); ++b) kept += h[b];
        if (need > kept) {
          out.error = ThresholdResult::kTooMany;
          out.error_index = static_cast<std::int64_t>(kept);
          return out;
        }
        if (need == 0) return out;
        first = false;
      } else {
        check(cudaStreamSynchronize(stream_), "prune_smallest histogram");
      }
      unsigned long long cum = 0;
      std::int64_t bin = 0;
      for (; bin < (std::int64_t{1} << width); ++bin) {
        if (cum + h[bin] >= need) break;
        cum += h[bin];
      }
      need -= cum;
      at_t = h[bin];
      prefix = static_cast<K>((prefix << width) | static_cast<K>(bin));
      hi = shift;
    }
    const K t = prefix;
    // `need` is now how many of the at_t kept keys equal to t go.
    if (nt) check(cudaMemsetAsync(pruned_, 0, nt * sizeof(unsigned long long), stream_), "memset");
    if (need == at_t) {
      for (std::size_t i = 0; i < nt; ++i) {
        const DeviceTensorRef& ti = ts_[i];
        if (ti.numel == 0) continue;
        with_elem(ti, [&](auto zero) {
          using E = decltype(zero);
          mark_kernel<K, E><<<hist_blocks(ti.numel), kThreads, 0, stream_>>>(
              dptr<const E>(ti.weight), dptr<std::uint8_t>(ti.mask), ti.numel, t, true, pruned_ + i);
        });
        check_launch("prune_smallest mark");
      }
    } else {
      mark_with_ties<K>(t, need);
    }
    std::vector<unsigned long long> pruned(nt);
    if (nt) check(cudaMemcpyAsync(pruned.data(), pruned_, nt * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_), "copy");
    check(cudaStreamSynchronize(stream_), "prune_smallest mark");
    for (std::size_t i = 0; i < nt; ++i) out.pruned[i] = static_cast<std::int64_t>(pruned[i]);
    out.threshold = value_of(t);
    return out;
  }

 private:
  template <class K>
  void mark_with_ties(K t, unsigned long long take) {
    const std::size_t nt = ts_.size();
    std::vector<std::int64_t> offset(nt + 1, 0);
    for (std::size_t i = 0; i < nt; ++i) offset[i + 1] = offset[i] + chunks_of(ts_[i].numel);
    const std::int64_t total = offset[nt];
    for (std::size_t i = 0; i < nt; ++i) {
      const DeviceTensorRef& ti = ts_[i];
      if (ti.numel == 0) continue;
      with_elem(ti, [&](auto zero) {
        using E = decltype(zero);
        tie_count_kernel<K, E><<<static_cast<unsigned>(chunks_of(ti.numel)), kThreads, 0, stream_>>>(
            dptr<const E>(ti.weight), dptr<const std::uint8_t>(ti.mask), ti.numel, t, chunk_words_ + offset[i]);
      });
      check_launch("prune_smallest tie count");
    }
    std::vector<unsigned long long> words(total);
    if (total) check(cudaMemcpyAsync(words.data(), chunk_words_, total * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_), "copy");
    check(cudaStreamSynchronize(stream_), "prune_smallest tie count");
    unsigned long long run = 0;  // ties before each chunk, in (tensor, index) order
    for (std::int64_t c = 0; c < total; ++c) {
      const unsigned long long here = words[c];
      words[c] = run;
      run += here;
    }
    if (total) check(cudaMemcpyAsync(chunk_words_, words.data(), total * sizeof(unsigned long long), cudaMemcpyHostToDevice, stream_), "copy");
    for (std::size_t i = 0; i < nt; ++i) {
      const DeviceTensorRef& ti = ts_[i];
      if (ti.numel == 0) continue;
      with_elem(ti, [&](auto zero) {
        using E = decltype(zero);
        mark_ties_kernel<K, E><<<static_cast<unsigned>(chunks_of(ti.numel)), kThreads, 0, stream_>>>(
            dptr<const E>(ti.weight), dptr<std::uint8_t>(ti.mask), ti.numel, t, chunk_words_ + offset[i], take,
            pruned_ + i);
      });
      check_launch("prune_smallest mark");
    }
    // the host vector must outlive the asynchronous upload
    check(cudaStreamSynchronize(stream_), "prune_smallest mark");
  }

  template <class K>
  static double value_of(K key) {
    if constexpr (std::is_same_v<K, std::uint32_t>) {
      float f;
      std::memcpy(&f, &key, sizeof f);
      return f;
    } else {
      double d;
      std::memcpy(&d, &key, sizeof d);
      return d;
    }
  }

  static double value_at(const DeviceTensorRef& t, std::int64_t index) {
    if (t.dtype == 1) {
      double v = 0;
      check(cudaMemcpy(&v, dptr<const double>(t.weight) + index, sizeof v, cudaMemcpyDeviceToHost), "copy");
      return v;
    }
    float f = 0;
    check(cudaMemcpy(&f, dptr<const float>(t.weight) + index, sizeof f, cudaMemcpyDeviceToHost), "copy");
    return f;
  }

  const std::vector<DeviceTensorRef>& ts_;
  unsigned long long *hist_, *first_bad_, *pruned_, *chunk_words_;
  cudaStream_t stream_;
};

}  // namespace

std::int64_t threshold_workspace_words(const std::vector<std::int64_t>& numels) {
  std::int64_t chunks = 0;
  for (std::int64_t n : numels) chunks += chunks_of(n);
  return kBins + 2 * static_cast<std::int64_t>(numels.size()) + chunks;
}

ThresholdResult prune_smallest(const std::vector<DeviceTensorRef>& tensors, std::int64_t k, ptr_t workspace,
                               ptr_t stream) {
  ThresholdResult bad;
  bool all_float32 = true;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const DeviceTensorRef& t = tensors[i];
    if ((t.dtype != 0 && t.dtype != 1) || t.numel < 0 || (t.numel > 0 && (t.weight == 0 || t.mask == 0))) {
      bad.error = ThresholdResult::kBadTensor;
      bad.error_tensor = static_cast<std::int64_t>(i);
      return bad;
    }
    all_float32 = all_float32 && t.dtype == 0;
  }
  if (k < 0) {
    bad.error = ThresholdResult::kNegativeK;
    return bad;
  }
  Selector s(tensors, dptr<unsigned long long>(workspace), as_stream(stream));
  return all_float32 ? s.run<std::uint32_t>(k) : s.run<unsigned long long>(k);
}

}  // namespace cuda
}  // namespace lf
