"""The fused top-k magnitude op against a sort-based reference, and its error handling."""
from __future__ import annotations

import math

import pytest
import torch

from lottery_fast import _core
from lottery_fast._buffers import dtype_code
from lottery_fast.prune import ThresholdResult, prune_smallest_


def reference(weights, masks, k):
    """Stable sort of the kept |w| (exact in float64) by (value, tensor order, flat index)."""
    absval = torch.cat([w.detach().reshape(-1).double().abs() for w in weights]) if weights else torch.zeros(0)
    kept = torch.cat([m.reshape(-1) for m in masks]) if masks else torch.zeros(0, dtype=torch.bool)
    idx = kept.nonzero().squeeze(1)
    order = torch.sort(absval[idx], stable=True).indices
    chosen = idx[order[:k]]
    new = kept.clone()
    new[chosen] = False
    threshold = float(absval[chosen[-1]]) if k else -math.inf
    parts = list(torch.split(new, [m.numel() for m in masks]))
    new_masks = [p.view(m.shape) for p, m in zip(parts, masks)]
    pruned = [int(m.sum()) - int(n.sum()) for m, n in zip(masks, new_masks)]
    return new_masks, threshold, pruned


def core_call(weights, masks, k, candidate_cap):
    """The raw op with an explicit candidate cap (0 forces the one-pass-per-digit path)."""
    return _core.prune_smallest_([w.data_ptr() for w in weights], [m.data_ptr() for m in masks],
                                 [w.numel() for w in weights], [dtype_code(w) for w in weights], k,
                                 [f"t{i}" for i in range(len(weights))], candidate_cap)


def random_case(seed: int, dtypes):
    """Tensors with heavy ties, zeros (both signs), subnormals, empty tensors and pruned entries."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 6, (1,), generator=g))
    weights, masks = [], []
    for i in range(n):
        dtype = dtypes[i % len(dtypes)]
        shape = [(0,), (7,), (3, 5), (2, 3, 4), (1,), (33, 17)][int(torch.randint(0, 6, (1,), generator=g))]
        kind = int(torch.randint(0, 4, (1,), generator=g))
        if kind == 0:  # few distinct values: many ties, signed zeros
            w = (torch.randint(-3, 4, shape, generator=g).to(dtype) * 0.25)
            w[torch.rand(shape, generator=g) < 0.2] = -0.0
        elif kind == 1:  # all equal
            w = torch.full(shape, -0.5, dtype=dtype)
        elif kind == 2:  # continuous, spanning many octaves, with subnormals
            w = torch.randn(shape, generator=g, dtype=dtype) * 10.0 ** torch.randint(-40, 3, shape, generator=g)
        else:
            w = torch.randn(shape, generator=g, dtype=dtype)
        m = torch.rand(shape, generator=g) < float(torch.rand((), generator=g))
        weights.append(w)
        masks.append(m)
    return weights, masks, g


def ks_for(masks, g):
    kept = sum(int(m.sum()) for m in masks)
    return sorted({0, kept, int(torch.randint(0, kept + 1, (1,), generator=g)), min(1, kept), max(kept - 1, 0)})


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float64,), (torch.float32, torch.float64)],
                         ids=["f32", "f64", "mixed"])
@pytest.mark.parametrize("seed", range(25))
def test_matches_sort_reference(seed, dtypes):
    weights, masks, g = random_case(seed, dtypes)
    for k in ks_for(masks, g):
        want_masks, want_t, want_pruned = reference(weights, masks, k)
        got = [m.clone() for m in masks]
        res = prune_smallest_(weights, got, k)
        assert isinstance(res, ThresholdResult)
        assert res.pruned == want_pruned
        assert res.threshold == want_t
        for a, b in zip(got, want_masks):
            assert torch.equal(a, b)
        # the path that resolves every digit by a pass over all weights gives the same answer
        got2 = [m.clone() for m in masks]
        t2, p2 = core_call(weights, got2, k, candidate_cap=0)
        assert (t2, list(p2)) == (want_t, want_pruned)
        for a, b in zip(got2, want_masks):
            assert torch.equal(a, b)


def test_float64_resolution_and_subnormals():
    # differences below float32 precision, and float32 subnormals, must order exactly
    w64 = torch.tensor([1.0 + 2e-16, 1.0, 1.0 + 4e-16, -1.0 - 1e-16], dtype=torch.float64)
    w32 = torch.tensor([1e-45, -3e-45, 0.0, 1e-38], dtype=torch.float32)
    for ws in ([w64], [w32], [w32, w64]):
        for k in range(sum(w.numel() for w in ws) + 1):
            masks = [torch.ones_like(w, dtype=torch.bool) for w in ws]
            want, want_t, _ = reference(ws, masks, k)
            res = prune_smallest_(ws, masks, k)
            assert res.threshold == want_t
            assert all(torch.equal(a, b) for a, b in zip(masks, want))


def large_tied_case(dtype):
    # several blocks of 2^16 and above the parallel threshold; only 1000 distinct magnitudes, so the
    # threshold value is shared by ~350 entries spread over many blocks and tensors
    g = torch.Generator().manual_seed(7)
    shapes = [(300, 500), (70_000,), (0,), (64, 3, 3, 3), (200, 101)]
    weights = [(torch.randint(-1000, 1000, s, generator=g).to(dtype) / 7.0) for s in shapes]
    masks = [torch.rand(s, generator=g) < 0.9 for s in shapes]
    return weights, masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_ties_thread_count_independent(dtype):
    weights, masks = large_tied_case(dtype)
    kept = sum(int(m.sum()) for m in masks)
    before = _core.max_threads()
    try:
        for k in (kept // 5, kept // 2 + 1, kept):
            want, want_t, want_pruned = reference(weights, masks, k)
            for threads in (1, 2):
                _core.set_num_threads(threads)
                for cap in (0, 1 << 19):
                    got = [m.clone() for m in masks]
                    t, pruned = core_call(weights, got, k, cap)
                    assert (t, list(pruned)) == (want_t, want_pruned), (threads, cap)
                    assert all(torch.equal(a, b) for a, b in zip(got, want)), (threads, cap)
    finally:
        _core.set_num_threads(before)


def test_large_continuous_threads():
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(s, generator=g) * sc for s, sc in [((256, 784), 0.05), ((256, 256), 0.1), ((10, 256), 1.0)]]
    masks = [torch.rand(w.shape, generator=g) < 0.5 for w in weights]
    k = int(0.2 * sum(int(m.sum()) for m in masks))
    want, want_t, want_pruned = reference(weights, masks, k)
    before = _core.max_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            got = [m.clone() for m in masks]
            res = prune_smallest_(weights, got, k)
            assert (res.threshold, res.pruned) == (want_t, want_pruned)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
    finally:
        _core.set_num_threads(before)


def test_no_tensors():
    assert prune_smallest_([], [], 0) == ThresholdResult(threshold=-math.inf, pruned=[])
    with pytest.raises(ValueError, match="k=1"):
        prune_smallest_([], [], 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_kept_weight_raises_and_leaves_masks(bad, dtype):
    weights = [torch.randn(4, 5, dtype=dtype), torch.randn(300_000, dtype=dtype)]
    weights[1][123_456] = bad
    masks = [torch.ones(4, 5, dtype=torch.bool), torch.ones(300_000, dtype=torch.bool)]
    with pytest.raises(ValueError, match=r"actor\.2.*non-finite.*123456"):
        prune_smallest_(weights, masks, 10, names=["actor.0", "actor.2"])
    assert all(bool(m.all()) for m in masks)
    # at a pruned position it is ignored
    masks[1][123_456] = False
    res = prune_smallest_(weights, masks, 10)
    assert sum(res.pruned) == 10 and not bool(masks[1][123_456])


def test_input_validation():
    w, m = torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"lin \(tensor 0\).*shape"):
        prune_smallest_([w], [torch.ones(4, 3, dtype=torch.bool)], 1, names=["lin"])
    with pytest.raises(TypeError, match="torch.bool"):
        prune_smallest_([w], [torch.ones(3, 4, dtype=torch.uint8)], 1)
    with pytest.raises(TypeError, match="dtype"):
        prune_smallest_([w.half()], [m], 1)
    with pytest.raises(ValueError, match="contiguous"):
        prune_smallest_([w.t()], [torch.ones(3, 4, dtype=torch.bool).t()], 1)
    with pytest.raises(ValueError, match="more than the 12 kept"):
        prune_smallest_([w], [m], 13)
    with pytest.raises(ValueError, match="negative"):
        prune_smallest_([w], [m], -1)
    with pytest.raises(TypeError, match="int"):
        prune_smallest_([w], [m], 1.0)
    with pytest.raises(ValueError, match="2 weight tensors but 1 masks"):
        prune_smallest_([w, w], [m], 1)
    with pytest.raises(ValueError, match="shares its memory"):
        prune_smallest_([w, w], [m, m], 1)
    assert bool(m.all())


def test_noncontiguous_weight_is_read_through_a_copy():
    w = torch.randn(5, 7).t()  # non-contiguous; the mask follows its logical (row-major) layout
    m = torch.ones(7, 5, dtype=torch.bool)
    want, want_t, _ = reference([w], [m], 11)
    res = prune_smallest_([w], [m], 11)
    assert torch.equal(m, want[0]) and res.threshold == want_t


def test_mask_version_bumped_and_weights_untouched():
    w = torch.randn(6, 6, requires_grad=True)
    m = torch.ones(6, 6, dtype=torch.bool)
    w0, v0 = w.detach().clone(), m._version
    prune_smallest_([w], [m], 5)
    assert m._version > v0
    assert torch.equal(w.detach(), w0)
    assert int((~m).sum()) == 5
