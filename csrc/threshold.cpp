// Fused global top-k magnitude selection by radix select on the bits of |w|.
//
// For non-negative IEEE floats the bit pattern, read as an integer, orders like the value, so "the
// k smallest |w|" is "the k smallest keys" with key = bits(w) without the sign bit. We find the
// k-th smallest key digit by digit (16 bits at a time, most significant first): one pass per digit
// builds per-thread histograms of the kept keys that share the digits resolved so far, and the
// cumulative count picks the next digit (float32 keys have 31 bits, float64 63; a mix of both
// compares float32 weights as exactly converted doubles). Keys are held in signed integers (the
// sign bit is always clear) so that the compare loops vectorise with plain AVX2 compares.
//
// Usually the first digit already leaves few candidates (the threshold's bucket spans 1/256 of an
// octave for float32), so the second pass prunes everything below that bucket while collecting the
// bucket's entries, and an nth_element over them finishes: two passes in all. Only when the bucket
// exceeds a fixed cap (heavy ties) do the remaining digits get their own passes, then a mark pass.
// Memory beyond the inputs: one 512 KiB histogram per thread, a few words per block and at most
// `candidate_cap` candidates -- nothing proportional to the model size.
//
// Exactly k entries are pruned: all kept keys below the threshold key T, and of those equal to T
// the ones first in (tensor order, flat index). Blocks are fixed-size slices of the tensors, so
// every count and decision is a pure function of the data: the thread count changes nothing.
#include "threshold.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>

#include "common.h"

namespace py = pybind11;

namespace lf {
namespace {

constexpr int kDigitBits = 16;
constexpr std::size_t kBins = std::size_t{1} << kDigitBits;
constexpr std::size_t kHistStride = kBins + 8;  // per-thread histogram: kBins bins + 8 spare ones
// Elements per work item: large enough to amortise scheduling, small enough to balance 2-16
// threads.
constexpr std::int64_t kBlock = std::int64_t{1} << 16;
// Below this many elements in total, thread start-up costs more than it saves.
constexpr std::int64_t kParallelMin = std::int64_t{1} << 17;

template <class K>
struct KeySpec;
template <>
struct KeySpec<std::int32_t> {
  static constexpr int bits = 31;
  static constexpr std::int32_t inf = 0x7f800000;  // keys >= inf are inf or NaN
  static double value(std::int32_t key) {
    float f;
    std::memcpy(&f, &key, sizeof f);
    return f;
  }
};
template <>
struct KeySpec<std::int64_t> {
  static constexpr int bits = 63;
  static constexpr std::int64_t inf = 0x7ff0000000000000ll;
  static double value(std::int64_t key) {
    double d;
    std::memcpy(&d, &key, sizeof d);
    return d;
  }
};

// Key of |v|: its IEEE bits without the sign (float32 in a 64-bit key goes through an exact double).
template <class K, class E>
inline K key_of(E v) {
  if constexpr (std::is_same_v<K, std::int32_t>) {
    static_assert(std::is_same_v<E, float>, "32-bit keys only for float32 weights");
    std::int32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b & 0x7fffffff;
  } else {
    const double d = static_cast<double>(v);
    std::int64_t b;
    std::memcpy(&b, &d, sizeof b);
    return b & 0x7fffffffffffffffll;
  }
}

struct Item {
  std::size_t tensor;
  std::int64_t begin, end;
};

// One radix digit: bits [shift, shift + width) of the key.
struct Digit {
  int shift, width;
};

// --- kernels over one block -------------------------------------------------------------------

// First digit: every kept key counts. NaN/inf need no test here: they are exactly the keys >= inf,
// i.e. the histogram's top bins. Bin indices are computed a chunk at a time in a loop that
// vectorises, then counted in a tight scalar loop. Pruned entries (mostly |w| = 0, all in bin 0) go
// to 8 rotating spare bins past the end: sending them all to one bin would chain every increment
// through the same memory word.
template <class K, class E>
LF_INLINE void hist_first_impl(const E* w, const std::uint8_t* m, std::int64_t n, int shift, std::uint64_t* hist) {
  constexpr std::int64_t kChunk = 256;
  std::uint32_t idx[kChunk];
  for (std::int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const std::int64_t len = std::min(kChunk, n - c0);
    for (std::int64_t j = 0; j < len; ++j) {
      const std::uint32_t bin = static_cast<std::uint32_t>(key_of<K>(w[c0 + j]) >> shift);
      const std::uint32_t spare = static_cast<std::uint32_t>(kBins) + static_cast<std::uint32_t>(j & 7);
      const std::uint32_t sel = 0u - static_cast<std::uint32_t>(m[c0 + j]);  // all ones when kept
      idx[j] = (bin & sel) | (spare & ~sel);
    }
    for (std::int64_t j = 0; j < len; ++j) ++hist[idx[j]];
  }
}

// Later digits: only kept keys whose higher digits equal `prefix` count; they are a small minority,
// so a predictable branch beats touching the histogram for every element.
template <class K, class E>
void hist_next(const E* w, const std::uint8_t* m, std::int64_t n, Digit d, K prefix, std::uint64_t* hist) {
  const int hi_shift = d.shift + d.width;
  const K digit_mask = (K{1} << d.width) - 1;
  for (std::int64_t i = 0; i < n; ++i) {
    const K key = key_of<K>(w[i]);
    if (m[i] && (key >> hi_shift) == prefix) ++hist[(key >> d.shift) & digit_mask];
  }
}

// A kept entry whose first digit equals the threshold's: resolved in memory after the first pass.
template <class K>
struct Candidate {
  K key;
  std::uint32_t tensor;
  std::int64_t index;
  bool operator<(const Candidate& o) const {
    if (key != o.key) return key < o.key;
    if (tensor != o.tensor) return tensor < o.tensor;
    return index < o.index;
  }
};

// Where mark() appends the kept entries with (key >> shift) == limit, if anywhere.
template <class K>
struct Collector {
  std::vector<Candidate<K>>* out;
  std::uint32_t tensor;
  std::int64_t begin;  // flat index of the block's first element
};

// Prunes kept keys with (key >> shift) < limit, or <= limit when kInclusive; returns how many, and
// adds to `ties` the kept keys with (key >> shift) == limit (left alone when !kInclusive), which
// kCollect also appends to `sink`. Works in chunks so that the compare loop vectorises and only
// the rare chunks holding a tie are scanned again for collection.
template <bool kInclusive, bool kCollect, class K, class E>
LF_INLINE std::int64_t mark_impl(const E* w, std::uint8_t* m, std::int64_t n, int shift, K limit,
                                 std::int64_t& ties, Collector<K> sink) {
  constexpr std::int64_t kChunk = 256;
  std::int64_t p_sum = 0, t_sum = 0;
  for (std::int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const std::int64_t c1 = std::min(n, c0 + kChunk);
    std::uint32_t chunk_ties = 0, chunk_pruned = 0;
    for (std::int64_t i = c0; i < c1; ++i) {
      const K top = key_of<K>(w[i]) >> shift;
      const std::uint8_t keep = m[i];
      const std::uint8_t p = keep & static_cast<std::uint8_t>(kInclusive ? top <= limit : top < limit);
      if (!kInclusive) chunk_ties += keep & static_cast<std::uint8_t>(top == limit);
      m[i] = keep ^ p;
      chunk_pruned += p;
    }
    if (kCollect && chunk_ties) {
      for (std::int64_t i = c0; i < c1; ++i) {
        const K key = key_of<K>(w[i]);
        if (m[i] && (key >> shift) == limit) sink.out->push_back({key, sink.tensor, sink.begin + i});
      }
    }
    p_sum += chunk_pruned;
    t_sum += chunk_ties;
  }
  ties += t_sum;
  return p_sum;
}

// The two vectorised passes, stamped per ISA (see detect_isa() in common.h) and picked once.
#define LF_THRESHOLD_STAMPS(SUFFIX, TARGET)                                                             \
  template <class K, class E>                                                                         \
  TARGET void hist_first_##SUFFIX(const E* w, const std::uint8_t* m, std::int64_t n, int shift,       \
                                  std::uint64_t* hist) {                                              \
    hist_first_impl<K, E>(w, m, n, shift, hist);                                                      \
  }                                                                                                   \
  template <bool kInclusive, bool kCollect, class K, class E>                                         \
  TARGET std::int64_t mark_##SUFFIX(const E* w, std::uint8_t* m, std::int64_t n, int shift, K limit,  \
                                    std::int64_t& ties, Collector<K> sink) {                          \
    return mark_impl<kInclusive, kCollect, K, E>(w, m, n, shift, limit, ties, sink);                  \
  }
LF_THRESHOLD_STAMPS(base, )
LF_THRESHOLD_STAMPS(avx2, LF_TARGET_AVX2)
LF_THRESHOLD_STAMPS(avx512, LF_TARGET_AVX512)
#undef LF_THRESHOLD_STAMPS

template <class K, class E>
inline void hist_first(const E* w, const std::uint8_t* m, std::int64_t n, int shift, std::uint64_t* hist) {
  static const auto f = pick_isa(&hist_first_base<K, E>, &hist_first_avx2<K, E>, &hist_first_avx512<K, E>);
  f(w, m, n, shift, hist);
}

template <bool kInclusive, bool kCollect, class K, class E>
inline std::int64_t mark(const E* w, std::uint8_t* m, std::int64_t n, int shift, K limit, std::int64_t& ties,
                         Collector<K> sink) {
  static const auto f = pick_isa(&mark_base<kInclusive, kCollect, K, E>, &mark_avx2<kInclusive, kCollect, K, E>,
                                 &mark_avx512<kInclusive, kCollect, K, E>);
  return f(w, m, n, shift, limit, ties, sink);
}

// Prunes the first `take` kept entries whose key equals t, in flat order.
template <class K, class E>
void fill_ties(const E* w, std::uint8_t* m, std::int64_t n, K t, std::int64_t take) {
  for (std::int64_t i = 0; i < n && take > 0; ++i) {
    if (m[i] && key_of<K>(w[i]) == t) {
      m[i] = 0;
      --take;
    }
  }
}

// Calls f(ptr) with the weight pointer of block `it` typed as its element type.
template <class K, class F>
inline void with_weights(const MaskedTensorRef& t, const Item& it, F&& f) {
  if (t.dtype == static_cast<int>(DType::Float64)) {
    if constexpr (std::is_same_v<K, std::int64_t>) f(as_ptr<const double>(t.weight) + it.begin);
  } else {
    f(as_ptr<const float>(t.weight) + it.begin);
  }
}

template <class P>
using elem_t = std::remove_const_t<std::remove_pointer_t<P>>;

// Names the first tensor holding a kept NaN/inf (the histogram only says that one exists).
[[noreturn]] void throw_non_finite(const std::vector<MaskedTensorRef>& ts) {
  for (const auto& t : ts) {
    auto report = [&](auto* w) {
      for (std::int64_t i = 0; i < t.numel; ++i) {
        if (t.mask[i] && !std::isfinite(static_cast<double>(w[i]))) {
          std::ostringstream msg;
          msg << "prune_smallest: " << t.name << " has a non-finite weight (" << static_cast<double>(w[i])
              << ") at kept flat index " << i;
          throw std::invalid_argument(msg.str());
        }
      }
    };
    if (t.dtype == static_cast<int>(DType::Float64)) report(as_ptr<const double>(t.weight));
    else report(as_ptr<const float>(t.weight));
  }
  throw std::logic_error("prune_smallest: non-finite bin counted without a non-finite value");
}

class Selector {
 public:
  Selector(const std::vector<MaskedTensorRef>& ts, std::int64_t candidate_cap) : ts_(ts), cap_(candidate_cap) {
    std::int64_t total = 0;
    for (std::size_t t = 0; t < ts.size(); ++t) {
      for (std::int64_t b = 0; b < ts[t].numel; b += kBlock) items_.push_back({t, b, std::min(b + kBlock, ts[t].numel)});
      total += ts[t].numel;
    }
    n_items_ = static_cast<std::int64_t>(items_.size());
    par_ = total >= kParallelMin;
  }

  template <class K>
  ThresholdOutcome run(std::int64_t k) {
    ThresholdOutcome out{-std::numeric_limits<double>::infinity(), std::vector<std::int64_t>(ts_.size(), 0)};
    std::vector<Digit> digits;
    for (int hi = KeySpec<K>::bits; hi > 0; hi -= kDigitBits) {
      const int width = std::min(kDigitBits, hi);
      digits.push_back({hi - width, width});
    }
    K prefix = 0;
    std::uint64_t need = 0, at_threshold = 0;
    for (std::size_t level = 0; level < digits.size(); ++level) {
      const Digit d = digits[level];
      const std::vector<std::uint64_t> h = histogram<K>(level == 0, d, prefix);
      if (level == 0) {
        std::uint64_t kept = 0;
        for (std::uint64_t c : h) kept += c;
        if (non_finite_counted<K>(h, d)) throw_non_finite(ts_);
        if (static_cast<std::uint64_t>(k) > kept) {
          throw std::invalid_argument("prune_smallest: k=" + std::to_string(k) + " is more than the " +
                                      std::to_string(kept) + " kept weights");
        }
        if (k == 0) return out;
        need = static_cast<std::uint64_t>(k);
      }
      // The digit whose bucket holds the need-th smallest of the candidates.
      std::size_t b = 0;
      std::uint64_t below = 0;
      while (below + h[b] < need) below += h[b++];
      need -= below;
      prefix = static_cast<K>((prefix << d.width) | static_cast<K>(b));
      at_threshold = h[b];
      if (level == 0 && static_cast<std::int64_t>(h[b]) <= cap_) return finish_in_memory<K>(d.shift, prefix, need, std::move(out));
    }
    out.threshold = KeySpec<K>::value(prefix);
    finish_by_passes<K>(prefix, need, at_threshold == need, out);
    return out;
  }

 private:
  template <class K>
  static bool non_finite_counted(const std::vector<std::uint64_t>& h, Digit d) {
    for (std::size_t b = static_cast<std::size_t>(KeySpec<K>::inf >> d.shift); b < kBins; ++b)
      if (h[b]) return true;
    return false;
  }

  // Histogram of one digit over the kept keys (all on the first level, else those under `prefix`).
  template <class K>
  std::vector<std::uint64_t> histogram(bool first, Digit d, K prefix) {
    const int n_threads = max_threads();
    std::vector<std::uint64_t> per_thread(static_cast<std::size_t>(n_threads) * kHistStride, 0);
#pragma omp parallel if (par_) num_threads(n_threads)
    {
      std::uint64_t* th = per_thread.data() + static_cast<std::size_t>(thread_id()) * kHistStride;
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t i = 0; i < n_items_; ++i) {
        const Item& it = items_[i];
        with_weights<K>(ts_[it.tensor], it, [&](auto* w) {
          const std::uint8_t* m = ts_[it.tensor].mask + it.begin;
          if (first) hist_first<K, elem_t<decltype(w)>>(w, m, it.end - it.begin, d.shift, th);
          else hist_next<K, elem_t<decltype(w)>>(w, m, it.end - it.begin, d, prefix, th);
        });
      }
    }
    std::vector<std::uint64_t> h(per_thread.begin(), per_thread.begin() + kBins);
    for (int t = 1; t < n_threads; ++t)
      for (std::size_t b = 0; b < kBins; ++b) h[b] += per_thread[static_cast<std::size_t>(t) * kHistStride + b];
    return h;
  }

  // After the first digit: one pass prunes every kept entry below the threshold's bucket and
  // collects the bucket; the `need` smallest of it by (key, tensor, index) are pruned too.
  template <class K>
  ThresholdOutcome finish_in_memory(int shift, K bucket, std::uint64_t need, ThresholdOutcome out) {
    std::vector<std::int64_t> item_pruned(items_.size(), 0);
    const int n_threads = max_threads();
    std::vector<std::vector<Candidate<K>>> found(static_cast<std::size_t>(n_threads));
#pragma omp parallel if (par_) num_threads(n_threads)
    {
      auto& mine = found[static_cast<std::size_t>(thread_id())];
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t i = 0; i < n_items_; ++i) {
        const Item& it = items_[i];
        with_weights<K>(ts_[it.tensor], it, [&](auto* w) {
          using E = elem_t<decltype(w)>;
          std::uint8_t* m = ts_[it.tensor].mask + it.begin;
          const std::int64_t n = it.end - it.begin;
          std::int64_t in_bucket = 0;
          item_pruned[i] = mark<false, true, K, E>(w, m, n, shift, bucket, in_bucket,
                                                   {&mine, static_cast<std::uint32_t>(it.tensor), it.begin});
        });
      }
    }
    std::vector<Candidate<K>> cand;
    for (auto& f : found) cand.insert(cand.end(), f.begin(), f.end());
    const auto nth = cand.begin() + static_cast<std::ptrdiff_t>(need - 1);
    std::nth_element(cand.begin(), nth, cand.end());
    out.threshold = KeySpec<K>::value(nth->key);
    for (auto c = cand.begin(); c <= nth; ++c) {
      ts_[c->tensor].mask[c->index] = 0;
      ++out.pruned[c->tensor];
    }
    for (std::int64_t i = 0; i < n_items_; ++i) out.pruned[items_[i].tensor] += item_pruned[i];
    return out;
  }

  // After all digits: threshold key t is known and `need` of its kept ties must go. One pass prunes
  // the keys below t (and all ties when they all go); otherwise the ties go in (tensor, index)
  // order: whole blocks while they fit, then the first ones of one block.
  template <class K>
  void finish_by_passes(K t, std::uint64_t need, bool all_ties, ThresholdOutcome& out) {
    std::vector<std::int64_t> item_pruned(items_.size(), 0), item_ties(items_.size(), 0);
#pragma omp parallel for schedule(dynamic, 1) if (par_)
    for (std::int64_t i = 0; i < n_items_; ++i) {
      const Item& it = items_[i];
      with_weights<K>(ts_[it.tensor], it, [&](auto* w) {
        using E = elem_t<decltype(w)>;
        std::uint8_t* m = ts_[it.tensor].mask + it.begin;
        item_pruned[i] = all_ties ? mark<true, false, K, E>(w, m, it.end - it.begin, 0, t, item_ties[i], {})
                                  : mark<false, false, K, E>(w, m, it.end - it.begin, 0, t, item_ties[i], {});
      });
    }
    if (!all_ties) {
      std::vector<std::pair<std::int64_t, std::int64_t>> fills;  // (item, ties to prune in it)
      std::int64_t left = static_cast<std::int64_t>(need);
      for (std::int64_t i = 0; i < n_items_ && left > 0; ++i) {
        if (item_ties[i] == 0) continue;
        const std::int64_t take = std::min(left, item_ties[i]);
        fills.emplace_back(i, take);
        left -= take;
      }
      const std::int64_t n_fills = static_cast<std::int64_t>(fills.size());
#pragma omp parallel for schedule(dynamic, 1) if (par_)
      for (std::int64_t f = 0; f < n_fills; ++f) {
        const Item& it = items_[fills[f].first];
        with_weights<K>(ts_[it.tensor], it, [&](auto* w) {
          fill_ties<K, elem_t<decltype(w)>>(w, ts_[it.tensor].mask + it.begin, it.end - it.begin, t, fills[f].second);
        });
        item_pruned[fills[f].first] += fills[f].second;
      }
    }
    for (std::int64_t i = 0; i < n_items_; ++i) out.pruned[items_[i].tensor] += item_pruned[i];
  }

  const std::vector<MaskedTensorRef>& ts_;
  std::int64_t cap_;
  std::vector<Item> items_;
  std::int64_t n_items_ = 0;
  bool par_ = false;
};

}  // namespace

ThresholdOutcome prune_smallest(const std::vector<MaskedTensorRef>& tensors, std::int64_t k,
                                std::int64_t candidate_cap) {
  bool all_float32 = true;
  for (const auto& t : tensors) {
    if (t.dtype != static_cast<int>(DType::Float32) && t.dtype != static_cast<int>(DType::Float64))
      throw std::invalid_argument("prune_smallest: " + t.name + " has unsupported dtype code " + std::to_string(t.dtype));
    if (t.numel < 0) throw std::invalid_argument("prune_smallest: " + t.name + " has negative numel");
    if (t.numel > 0 && (t.weight == 0 || t.mask == nullptr))
      throw std::invalid_argument("prune_smallest: " + t.name + " has a null data pointer");
    all_float32 = all_float32 && t.dtype == static_cast<int>(DType::Float32);
  }
  if (tensors.size() > std::numeric_limits<std::uint32_t>::max())
    throw std::invalid_argument("prune_smallest: too many tensors");
  if (k < 0) throw std::invalid_argument("prune_smallest: k=" + std::to_string(k) + " is negative");
  Selector s(tensors, candidate_cap);
  return all_float32 ? s.run<std::int32_t>(k) : s.run<std::int64_t>(k);
}

void register_threshold(py::module_& m) {
  m.def(
      "prune_smallest_",
      [](const std::vector<std::uintptr_t>& weights, const std::vector<std::uintptr_t>& masks,
         const std::vector<std::int64_t>& numels, const std::vector<int>& dtypes, std::int64_t k,
         const std::vector<std::string>& names, std::int64_t candidate_cap) {
        const std::size_t n = weights.size();
        if (masks.size() != n || numels.size() != n || dtypes.size() != n || (!names.empty() && names.size() != n))
          throw std::invalid_argument("prune_smallest_: weights, masks, numels, dtypes (and names) must have equal lengths");
        std::vector<MaskedTensorRef> ts(n);
        for (std::size_t i = 0; i < n; ++i) {
          ts[i] = {weights[i], as_ptr<std::uint8_t>(masks[i]), numels[i], dtypes[i],
                   names.empty() ? "tensor " + std::to_string(i) : names[i]};
        }
        ThresholdOutcome r;
        {
          py::gil_scoped_release release;
          r = prune_smallest(ts, k, candidate_cap);
        }
        return py::make_tuple(r.threshold, r.pruned);
      },
      py::arg("weights"), py::arg("masks"), py::arg("numels"), py::arg("dtypes"), py::arg("k"),
      py::arg("names") = std::vector<std::string>{}, py::arg("candidate_cap") = kDefaultCandidateCap,
      "Prune in place the k kept weights with the smallest |w| over all given tensors.\n\n"
      "weights/masks: data pointers of contiguous float32/float64 weights and bool (uint8) masks;\n"
      "numels, dtypes (0=float32, 1=float64), optional names for error messages. Ties at the\n"
      "threshold go by (tensor order, flat index). Returns (threshold, pruned_per_tensor); the\n"
      "threshold is the largest |w| pruned, -inf when k == 0. Raises ValueError for k outside\n"
      "[0, kept] or a NaN/inf kept weight (masks untouched then). candidate_cap (for tests): the\n"
      "largest threshold bucket resolved in memory; 0 forces the one-pass-per-digit path.");
}

}  // namespace lf
