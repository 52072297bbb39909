"""MaskedLinear forward/backward (sparse kernels and dense path) against a float64 torch reference."""
from __future__ import annotations

import pytest
import torch

from lottery_fast import _core
from lottery_fast.nn import MaskedLinear
from lottery_fast.nn.base import zero_pruned_
from lottery_fast.nn.linear import AUTO_MIN_WIDTH, DEFAULT_SPARSE_THRESHOLD
from lottery_fast.nn.ops import sparse_index_linear

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# (leading batch shape, in_features, out_features): 1xN and Nx1 maps, odd sizes, batch 1, a
# 1-D input, 3-D inputs, and batches that span several kernel tiles with a ragged last one.
SHAPES = [
    ((5,), 1, 9),
    ((3,), 9, 1),
    ((4,), 13, 7),
    ((1,), 64, 33),
    ((), 10, 6),
    ((2, 3), 20, 17),
    ((300,), 33, 65),
    ((7, 19), 40, 24),
]
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def _layer(n_in, n_out, sparsity, dtype, path, seed=0, bias=True) -> MaskedLinear:
    gen = torch.Generator().manual_seed(seed)
    layer = MaskedLinear(n_in, n_out, bias=bias, dtype=dtype, path=path)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen, dtype=dtype))
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen, dtype=dtype))
    layer.set_mask(torch.rand(n_out, n_in, generator=gen) >= sparsity)
    return layer


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    assert a.shape == ref.shape
    norm = ref.norm().item()
    if norm == 0.0:
        return a.abs().max().item() if a.numel() else 0.0
    return (a - ref).norm().item() / norm


def _reference(layer: MaskedLinear, x: torch.Tensor, grad_y: torch.Tensor):
    """float64 y and grads of (x, weight, bias) for x (W*M)^T + b, via plain torch autograd."""
    w = (layer.weight.detach().double() * layer.mask).requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().double().requires_grad_()
    xr = x.detach().double().requires_grad_()
    y = xr @ w.t()
    if b is not None:
        y = y + b
    y.backward(grad_y.double())
    return y, xr.grad, w.grad * layer.mask, None if b is None else b.grad


def _check(layer: MaskedLinear, x: torch.Tensor, seed: int = 1) -> None:
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = layer(x)
    assert y.shape == (*x.shape[:-1], layer.out_features)
    assert y.dtype == x.dtype
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    y.backward(grad_y)
    y_ref, gx_ref, gw_ref, gb_ref = _reference(layer, x, grad_y)
    tol = TOL[x.dtype]
    assert _rel_err(y, y_ref) < tol
    assert _rel_err(x.grad, gx_ref) < tol
    assert _rel_err(layer.weight.grad, gw_ref) < tol
    assert torch.all(layer.weight.grad[~layer.mask] == 0)  # pruned positions get exactly 0
    if gb_ref is not None:
        assert _rel_err(layer.bias.grad, gb_ref) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("lead,n_in,n_out", SHAPES)
def test_forward_backward_matches_reference(lead, n_in, n_out, sparsity, path, dtype):
    layer = _layer(n_in, n_out, sparsity, dtype, path)
    x = torch.randn(*lead, n_in, generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert layer.uses_sparse_path(x) == (path == "sparse")
    _check(layer, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,n_in,n_out", [((40,), 1300, 1100), ((2100,), 200, 50)])
def test_long_index_ranges_are_chunked_correctly(lead, n_in, n_out, dtype):
    """With long index ranges (hundreds of entries per row) the spmm passes walk the index in
    L1-sized chunks; with a long batch the weight gradient walks the columns in chunks."""
    layer = _layer(n_in, n_out, 0.9, dtype, "sparse")
    mask = layer.mask.clone()
    mask[:, 1024:1100] = False  # a whole chunk boundary region empty
    mask[7] = False
    layer.set_mask(mask)
    _check(layer, torch.randn(*lead, n_in, dtype=dtype))


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_fully_pruned_rows_and_columns(path):
    layer = _layer(23, 18, 0.3, torch.float64, path)
    mask = layer.mask.clone()
    mask[[0, 5, 17], :] = False  # outputs that see nothing: y = bias
    mask[:, [0, 3, 22]] = False  # inputs that feed nothing: grad_x = 0 there
    layer.set_mask(mask)
    x = torch.randn(37, 23, dtype=torch.float64)
    _check(layer, x)
    y = layer(x)
    assert torch.equal(y[:, [0, 5, 17]], layer.bias[[0, 5, 17]].detach().expand(37, 3))


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_bias_free_layer_and_each_subset_of_grads(path):
    layer = _layer(12, 8, 0.6, torch.float64, path, bias=False)
    x = torch.randn(5, 12, dtype=torch.float64)
    _check(layer, x)
    ref_y = x @ (layer.weight * layer.mask).t()
    for needs_x, needs_w in [(True, False), (False, True), (False, False)]:
        layer.weight.grad = None
        layer.weight.requires_grad_(needs_w)
        xi = x.clone().requires_grad_(needs_x)
        y = layer(xi)
        assert _rel_err(y, ref_y) < 1e-12
        if needs_x or needs_w:
            y.sum().backward()
            assert (xi.grad is not None) == needs_x
            assert (layer.weight.grad is not None) == needs_w
    layer.weight.requires_grad_(True)


def test_only_bias_needs_grad():
    layer = _layer(6, 4, 0.5, torch.float64, "sparse")
    layer.weight.requires_grad_(False)
    y = layer(torch.randn(3, 6, dtype=torch.float64))
    y.sum().backward()
    assert torch.equal(layer.bias.grad, torch.full((4,), 3.0, dtype=torch.float64))


def test_gradcheck_sparse_kernels():
    layer = _layer(9, 7, 0.5, torch.float64, "sparse")
    index = layer.sparse_index()
    mask = layer.mask.clone()
    mask[2] = False  # an empty row
    index = type(index).from_mask(mask)
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: sparse_index_linear(x, w, b, index), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: sparse_index_linear(x, w, None, index), (x, w))


def test_noncontiguous_input():
    layer = _layer(16, 10, 0.8, torch.float64, "sparse")
    base = torch.randn(16, 30, dtype=torch.float64)
    x = base.t()[::2]  # [15, 16], neither contiguous nor dense
    assert not x.is_contiguous()
    _check(layer, x)


def test_result_does_not_depend_on_thread_count():
    layer = _layer(200, 150, 0.9, torch.float32, "sparse")
    x = torch.randn(260, 200, requires_grad=True)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x.grad, layer.weight.grad = None, None
            y = layer(x)
            y.backward(torch.ones_like(y))
            outs.append((y.detach(), x.grad, layer.weight.grad))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_index_cache_follows_set_mask_and_in_place_edits():
    layer = _layer(30, 20, 0.5, torch.float64, "sparse")
    x = torch.randn(8, 30, dtype=torch.float64)
    first = layer.sparse_index()
    assert layer.sparse_index() is first  # cached while the mask is unchanged
    layer(x)
    assert layer.sparse_index() is first

    layer.set_mask(torch.rand(20, 30) > 0.7)
    second = layer.sparse_index()
    assert second is not first and second.nnz == int(layer.mask.sum())
    _check(layer, x)

    layer.mask[4, :] = False  # in-place edit, no set_mask
    assert layer.sparse_index() is not second
    y = layer(x)
    assert torch.equal(y[:, 4], layer.bias[4].detach().expand(8))
    assert torch.all(layer.weight[4] == 0)  # the edit also re-zeroed the newly pruned weights
    _check(layer, x)


def test_auto_path_switches_at_threshold():
    layer = _layer(160, 150, 0.0, torch.float32, "auto")
    x = torch.randn(4, 160)
    assert layer.path == "auto"
    assert not layer.uses_sparse_path(x)
    mask = torch.ones(150, 160, dtype=torch.bool)
    mask.view(-1)[: int(DEFAULT_SPARSE_THRESHOLD * mask.numel()) + 1] = False
    layer.set_mask(mask)
    assert layer.sparsity >= DEFAULT_SPARSE_THRESHOLD
    assert layer.uses_sparse_path(x)
    assert type(layer(x).grad_fn).__name__ == "_EagerMaskedLinearBackward"
    layer.sparse_threshold = 1.0
    assert not layer.uses_sparse_path(x)
    layer.sparse_threshold = 0.0
    assert layer.uses_sparse_path(x)
    layer.path = "dense"
    assert not layer.uses_sparse_path(x)
    with pytest.raises(ValueError, match="path"):
        layer.path = "fast"
    with pytest.raises(ValueError, match="sparse_threshold"):
        layer.sparse_threshold = 1.5
    with pytest.raises(ValueError, match="path"):
        MaskedLinear(3, 2, path="Sparse")


def test_auto_keeps_narrow_layers_dense():
    for n_in, n_out in [(64, 64), (4, 256), (1024, 8)]:
        assert n_in * n_out < AUTO_MIN_WIDTH * (n_in + n_out)
        layer = _layer(n_in, n_out, 0.99, torch.float32, "auto")
        assert not layer.uses_sparse_path(torch.randn(2, n_in))
        layer.path = "sparse"
        assert layer.uses_sparse_path(torch.randn(2, n_in))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_falls_back_to_torch(dtype):
    layer = _layer(24, 12, 0.9, torch.float32, "sparse").to(dtype)
    x = torch.randn(6, 24).to(dtype)
    assert not layer.uses_sparse_path(x)
    y = layer(x)
    ref = x.float() @ (layer.weight.float() * layer.mask).t() + layer.bias.float()
    assert y.dtype == dtype
    assert _rel_err(y, ref) < 2e-2


def test_non_cpu_tensors_take_the_torch_path():
    layer = _layer(8, 5, 0.9, torch.float32, "sparse").to("meta")
    x = torch.randn(3, 8, device="meta")
    assert not layer.uses_sparse_path(x)
    assert layer(x).shape == (3, 5)


def test_mixed_dtypes_are_left_to_torch():
    layer = _layer(8, 5, 0.9, torch.float32, "sparse")
    x = torch.randn(3, 8, dtype=torch.float64)
    assert not layer.uses_sparse_path(x)
    with pytest.raises(RuntimeError):
        layer(x)


def test_empty_batch():
    layer = _layer(8, 5, 0.9, torch.float32, "sparse")
    assert layer(torch.randn(0, 8)).shape == (0, 5)


def test_wrong_input_size_names_shapes():
    layer = _layer(8, 5, 0.5, torch.float32, "sparse")
    with pytest.raises(ValueError, match=r"\(3, 7\).*in_features=8"):
        layer(torch.randn(3, 7))
    with pytest.raises(ValueError, match="in_features=8"):
        layer(torch.tensor(1.0))


def test_inference_mode_and_no_grad():
    layer = _layer(20, 10, 0.9, torch.float32, "sparse")
    x = torch.randn(7, 20)
    ref = layer(x).detach()
    with torch.no_grad():
        assert torch.equal(layer(x), ref)
    with torch.inference_mode():
        assert torch.equal(layer(x), ref)


def test_zero_pruned_matches_masked_fill():
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        t = torch.randn(1000, 70, generator=gen, dtype=dtype)  # several parallel chunks
        keep = torch.rand(1000, 70, generator=gen) > 0.3
        assert torch.equal(zero_pruned_(t.clone(), keep), t.masked_fill(~keep, 0))
    t = torch.randn(10, 7)[:, ::2]  # non-contiguous: torch fallback
    keep = torch.rand(10, 4) > 0.5
    assert torch.equal(zero_pruned_(t.clone(), keep), t.masked_fill(~keep, 0))


_NARROW_ISA_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
from lottery_fast import _core
import test_masked_linear as t
assert _core.masked_linear_isa() not in ("avx512", {unexpected!r}), _core.masked_linear_isa()
for dtype in (torch.float32, torch.float64):
    # (9, 1300 -> 70): rows long enough for the spmm passes to walk their index in chunks
    for lead, n_in, n_out in [((1,), 7, 5), ((300,), 33, 65), ((7, 19), 40, 24), ((9,), 1300, 70)]:
        for sparsity in (0.0, 0.9, 1.0):
            layer = t._layer(n_in, n_out, sparsity, dtype, "sparse")
            t._check(layer, torch.randn(*lead, n_in, dtype=dtype))
    g = torch.randn(1000, 70, dtype=dtype)
    keep = torch.rand(1000, 70) > 0.3
    assert torch.equal(t.zero_pruned_(g.clone(), keep), g.masked_fill(~keep, 0))
print(_core.masked_linear_isa())
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_isa_kernels(isa):
    """The AVX2 and baseline instantiations, forced through LOTTERY_FAST_ISA in a subprocess."""
    import os
    import pathlib
    import subprocess
    import sys

    import lottery_fast

    tests = pathlib.Path(__file__).resolve().parent
    # the folder lottery_fast was imported from: site-packages when installed, the checkout in development
    root = pathlib.Path(lottery_fast.__file__).resolve().parents[1]
    script = _NARROW_ISA_SCRIPT.format(root=str(root), tests=str(tests),
                                       unexpected="avx2" if isa == "baseline" else "")
    run = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, LOTTERY_FAST_ISA=isa),
                         capture_output=True, text=True, timeout=300, cwd=tests)
    assert run.returncode == 0, run.stderr[-3000:]


def test_core_rejects_bad_shapes():
    with pytest.raises(ValueError, match="padded batch"):
        _core.masked_linear_forward(0, 0, 0, 0, 0, 4, 3, 2, 5, 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match=">= 1"):
        _core.masked_linear_forward(0, 0, 0, 0, 0, 0, 3, 2, 16, 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="dtype"):
        _core.masked_linear_padded_batch(4, 7)
    assert _core.masked_linear_isa() in ("avx512", "avx2", "baseline")
