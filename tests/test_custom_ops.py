"""The sparse-linear kernels as torch custom operators: opcheck, a float64 reference, the eager fast
path against the dispatcher, torch.compile(fullgraph=True) and torch.func."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lottery_fast import _core
from lottery_fast.nn import MaskedLinear
from lottery_fast.nn.ops import _BATCH_LINE, csc_by_sorting, padded_batch, sparse_linear
from lottery_fast.nn.sparse_index import SparseIndex

OPS = torch.ops.lottery_fast
# (batch, in, out, sparsity): odd sizes, a dense mask, a fully pruned one
CASES = [(5, 9, 7, 0.5), (1, 3, 1, 0.0), (17, 33, 12, 0.9), (4, 8, 6, 1.0)]


def _mask(n_out: int, n_in: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(n_out, n_in, generator=gen) >= sparsity
    if n_out > 2:
        mask[1] = False  # an empty row
    return mask


def _inputs(case, dtype, bias: bool, seed: int):
    batch, n_in, n_out, sparsity = case
    gen = torch.Generator().manual_seed(seed)
    mask = _mask(n_out, n_in, sparsity, gen)
    x = torch.randn(batch, n_in, generator=gen, dtype=dtype).requires_grad_()
    w = torch.randn(n_out, n_in, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(n_out, generator=gen, dtype=dtype).requires_grad_() if bias else None
    return x, w, b, mask


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_masked_linear(case, dtype):
    x, w, b, mask = _inputs(case, dtype, bias=dtype == torch.float32, seed=0)
    index = SparseIndex.from_mask(mask)
    for csc in ((index.col_ptr, index.row_idx), (None, None)):
        torch.library.opcheck(OPS.masked_linear.default, (x, w, b, index.row_ptr, index.col_idx, *csc))


@pytest.mark.parametrize("case", CASES)
def test_opcheck_index_and_backward_ops(case):
    batch, n_in, n_out, _ = case
    x, w, b, mask = _inputs(case, torch.float64, bias=True, seed=1)
    index = SparseIndex.from_mask(mask)
    torch.library.opcheck(OPS.csr_index.default, (mask,))
    torch.library.opcheck(OPS.csc_index.default, (index.row_ptr, index.col_idx, n_in))
    _, x_t, vals = OPS.masked_linear.default(x.detach(), w.detach(), b.detach(), index.row_ptr, index.col_idx,
                                              None, None)
    gy = torch.randn(batch, n_out, dtype=torch.float64)
    for need in ((True, True, True), (False, True, False), (True, False, True)):
        torch.library.opcheck(OPS.masked_linear_backward.default,
                              (gy, x_t, vals, None, index.row_ptr, index.col_idx, index.col_ptr, index.row_idx,
                               n_in, *need))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("through", ["fast path", "dispatcher"])
def test_masked_linear_matches_float64_reference(case, through):
    x, w, b, mask = _inputs(case, torch.float32, bias=True, seed=2)
    index = SparseIndex.from_mask(mask)
    if through == "fast path":
        y = sparse_linear(x, w, b, index.row_ptr, index.col_idx, index.col_ptr, index.row_idx)
    else:  # the CSC left to the backward (csc_index in the graph)
        y = OPS.masked_linear.default(x, w, b, index.row_ptr, index.col_idx, None, None)[0]
    gy = torch.randn_like(y)
    y.backward(gy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = nn.functional.linear(xd, wd * mask, bd)
    ref.backward(gy.double())
    assert torch.allclose(y.double(), ref, atol=1e-5, rtol=1e-5)
    for got, want in ((x.grad, xd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
        assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.all(w.grad[~mask] == 0)


def test_index_ops_match_sparse_index():
    gen = torch.Generator().manual_seed(3)
    for rows, cols, sparsity in ((7, 9, 0.5), (1, 1, 0.0), (5, 4, 1.0), (12, 31, 0.95)):
        mask = torch.rand(rows, cols, generator=gen) >= sparsity
        index = SparseIndex.from_mask(mask)
        row_ptr, col_idx = OPS.csr_index(mask)
        assert torch.equal(row_ptr, index.row_ptr) and torch.equal(col_idx, index.col_idx)
        col_ptr, row_idx = OPS.csc_index(row_ptr, col_idx, cols)
        assert torch.equal(col_ptr, index.col_ptr) and torch.equal(row_idx, index.row_idx)
        # the CUDA kernel's torch-only transpose, checked here on the CPU
        by_sort = csc_by_sorting(row_ptr, col_idx, cols)
        assert torch.equal(by_sort[0], col_ptr) and torch.equal(by_sort[1], row_idx)
    conv_mask = torch.rand(4, 3, 2, 2, generator=gen) > 0.5  # viewed as [4, 12]
    assert torch.equal(OPS.csr_index(conv_mask)[1], SparseIndex.from_mask(conv_mask).col_idx)


def test_fake_padded_batch_matches_the_core():
    assert set(_BATCH_LINE) == {torch.float32, torch.float64}
    for dtype, code in ((torch.float32, 0), (torch.float64, 1)):
        for batch in range(1, 200):
            assert padded_batch(batch, dtype) == _core.masked_linear_padded_batch(batch, code)


def _mlp(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(MaskedLinear(9, 17, path="sparse", dtype=dtype), nn.ReLU(),
                         MaskedLinear(17, 3, path="sparse", dtype=dtype))


def _set_masks(model: nn.Module, sparsity: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in (model[0], model[2]):
        m.set_mask(torch.rand(m.weight.shape, generator=gen) >= sparsity)


def _step(model: nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.pow(2).sum().backward()
    return y.detach(), x.grad.clone() if x.grad is not None else None, [p.grad.clone() for p in model.parameters()]


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    """One compiled masked MLP on the sparse path: fresh inputs at several batch sizes (dynamic) and
    masks of several sparsities, fully pruned included, changed between calls without recompiling
    by hand; the first layer's input with and without grad."""
    model = _mlp()
    compiled = torch.compile(model, fullgraph=True)
    gen = torch.Generator().manual_seed(5)
    for i, (batch, sparsity) in enumerate(((4, 0.5), (7, 0.9), (13, 1.0), (1, 0.0), (6, 0.7))):
        _set_masks(model, sparsity, seed=i)
        x = torch.randn(batch, 9, generator=gen).requires_grad_(i % 2 == 0)
        want = _step(model, x)
        x.grad = None
        got = _step(compiled, x)
        assert torch.equal(got[0], want[0]), (batch, sparsity)
        if want[1] is not None:
            assert torch.allclose(got[1], want[1], atol=1e-6)
        for g, w in zip(got[2], want[2]):
            assert torch.allclose(g, w, atol=1e-6), (batch, sparsity)
    for m in (model[0], model[2]):
        assert torch.all(m.weight.grad[~m.mask] == 0)
    x3 = torch.randn(2, 3, 9, generator=gen)  # leading dimensions
    assert torch.allclose(compiled(x3), model(x3), atol=1e-6)


def test_torch_func_grad_and_functional_call():
    """torch.func transforms run the masked layers on torch's ops (custom operators' autograd does
    not support them): same gradients as the eager sparse kernels, zero at pruned weights."""
    from torch.func import functional_call, grad, vmap

    model = _mlp(torch.float64)
    _set_masks(model, 0.6, seed=0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(5, 9, dtype=torch.float64)
    grads = grad(lambda p: functional_call(model, p, (x,)).pow(2).sum())(params)
    model(x).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-12), name
    assert torch.all(grads["0.weight"][~model[0].mask] == 0)
    per_row = vmap(lambda row: functional_call(model, params, (row,)))(x)
    assert torch.allclose(per_row, model(x), atol=1e-12)


def test_eager_paths_agree_under_no_grad():
    model = _mlp()
    _set_masks(model, 0.8, seed=1)
    x = torch.randn(6, 9)
    with torch.no_grad():
        fast = model(x)
    with torch.inference_mode():
        assert torch.equal(model(x), fast)
    assert torch.equal(model(x.requires_grad_()).detach(), fast)
