// Fused global magnitude selection: prune exactly the k kept weights with the smallest |w| over
// many tensors at once, writing straight into their masks (no concatenated copy).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lf {

// One weight tensor and its mask as raw buffers (flat, contiguous).
struct MaskedTensorRef {
  std::uintptr_t weight;  // float32 or float64 data, `numel` elements
  std::uint8_t* mask;     // `numel` bytes, each exactly 1 = kept or 0 = pruned (torch.bool)
  std::int64_t numel;
  int dtype;              // lf::DType code
  std::string name;       // used in error messages only
};

struct ThresholdOutcome {
  // Largest |w| pruned (as a double); -inf when k == 0.
  double threshold;
  // Weights pruned per tensor by this call, in the input order.
  std::vector<std::int64_t> pruned;
};

// Largest threshold bucket (kept entries sharing the threshold's top 16 key bits) that is resolved
// in memory after one pass instead of more passes over all weights: 512 Ki entries, at most 12 MiB.
constexpr std::int64_t kDefaultCandidateCap = std::int64_t{1} << 19;

// Prunes (sets mask to 0) exactly k kept entries: those with the smallest |w|, ties at the
// threshold broken by (tensor order, flat index), lowest first. The masks are untouched when it
// throws: std::invalid_argument for k outside [0, kept] or a NaN/inf weight at a kept position.
// Result and masks do not depend on the number of threads. Call without holding the GIL.
ThresholdOutcome prune_smallest(const std::vector<MaskedTensorRef>& tensors, std::int64_t k,
                                std::int64_t candidate_cap = kDefaultCandidateCap);

}  // namespace lf
