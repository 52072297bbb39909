"""The CUDA core against float64 torch references and against the CPU core (skipped without a GPU).

Same shapes, sparsities and tolerances as the CPU tests: masked linear and conv2d forward and
backward on the sparse path, gradcheck in float64, the radix-select threshold giving exactly the
CPU masks and threshold (ties included), and the layers and pruning functions dispatching on the
tensors' device.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lottery_fast import cuda
from lottery_fast.nn import MaskedConv2d, MaskedLinear, masked
from lottery_fast.nn.conv import sparse_conv2d
from lottery_fast.nn.sparse_index import SparseIndex
from lottery_fast.prune import PruneConfig, prune_model, prune_smallest_
from test_masked_conv import GEOMETRIES, random_mask, rel_err
from test_masked_linear import SHAPES, SPARSITIES, TOL
from test_threshold import ks_for, large_tied_case, random_case, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not cuda.is_available(), reason="needs the CUDA core and a CUDA device")]
DEV = torch.device("cuda")


def _linear(n_in, n_out, sparsity, dtype, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    layer = MaskedLinear(n_in, n_out, bias=bias, dtype=dtype, path="sparse")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen, dtype=dtype))
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen, dtype=dtype))
    mask = torch.rand(n_out, n_in, generator=gen) >= sparsity
    if n_out > 2 and n_in > 2:  # a fully pruned row and column as well
        mask[1] = False
        mask[:, 2] = False
    layer.set_mask(mask)
    return layer.to(DEV)


def _check_linear(layer: MaskedLinear, x: torch.Tensor, seed=1):
    x = x.clone().requires_grad_()
    y = layer(x)
    assert layer.uses_sparse_path(x)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(DEV)
    y.backward(grad_y)
    mask = layer.mask
    w = (layer.weight.detach().double() * mask).requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().double().requires_grad_()
    xr = x.detach().double().requires_grad_()
    ref = F.linear(xr, w, b)
    ref.backward(grad_y.double())
    tol = TOL[x.dtype]
    assert rel_err(y, ref) < tol
    assert rel_err(x.grad, xr.grad) < tol
    assert rel_err(layer.weight.grad, w.grad * mask) < tol
    assert torch.all(layer.weight.grad[~mask] == 0)
    if b is not None:
        assert rel_err(layer.bias.grad, b.grad) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES + [((300,), 257, 129), ((2048,), 64, 64)], ids=str)
def test_linear_matches_reference(shape, sparsity, dtype):
    lead, n_in, n_out = shape
    layer = _linear(n_in, n_out, sparsity, dtype)
    x = torch.randn(*lead, n_in, generator=torch.Generator().manual_seed(2), dtype=dtype).to(DEV)
    _check_linear(layer, x)


def test_linear_no_bias_and_noncontiguous_input():
    layer = _linear(40, 24, 0.9, torch.float32, bias=False)
    _check_linear(layer, torch.randn(40, 30, device=DEV).t())  # a transposed (non-contiguous) input


def test_linear_frozen_weight_still_gives_input_and_bias_grads():
    layer = _linear(50, 30, 0.9, torch.float64)
    layer.weight.requires_grad_(False)
    x = torch.randn(7, 50, dtype=torch.float64, device=DEV, requires_grad=True)
    g = torch.randn(7, 30, dtype=torch.float64, device=DEV)
    layer(x).backward(g)
    w = layer.weight * layer.mask
    assert rel_err(x.grad, g @ w) < 1e-10
    assert rel_err(layer.bias.grad, g.sum(0)) < 1e-10 and layer.weight.grad is None


def test_linear_gradcheck_float64():
    layer = _linear(7, 5, 0.5, torch.float64)
    x = torch.randn(3, 7, dtype=torch.float64, device=DEV, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    from lottery_fast.nn.ops import sparse_index_linear
    index = layer.sparse_index()
    assert torch.autograd.gradcheck(lambda x, w, b: sparse_index_linear(x, w * layer.mask, b, index), (x, w, b))


def test_linear_auto_path_and_training_keep_pruned_zero():
    torch.manual_seed(0)
    model = masked(torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 4))).to(DEV)
    prune_model(model, PruneConfig(rate=0.95))
    x = torch.randn(64, 256, device=DEV)
    assert not model[0].uses_sparse_path(x)  # below CUDA_MIN_WEIGHTS: cuBLAS wins on a GPU
    big = _linear(2048, 2048, 0.98, torch.float32)
    big.path = "auto"
    assert big.uses_sparse_path(torch.randn(8, 2048, device=DEV))
    big.sparse_threshold = 0.99  # the CPU threshold does not move the CUDA choice
    assert big.uses_sparse_path(torch.randn(8, 2048, device=DEV))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    for m in (model[0], model[2]):
        m(torch.randn(2, m.in_features, device=DEV))  # the forward re-zeroes after the step
        assert torch.all(m.weight[~m.mask] == 0)


def test_linear_runs_on_a_side_stream():
    layer = _linear(300, 200, 0.95, torch.float32)
    x = torch.randn(512, 300, device=DEV)
    want = F.linear(x, layer.weight * layer.mask, layer.bias)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = layer(x)
    side.synchronize()
    assert rel_err(got, want) < 1e-5


def test_linear_cuda_graph_capture():
    layer = _linear(128, 256, 0.95, torch.float32)
    x = torch.randn(64, 128, device=DEV)
    layer(x)  # builds the index outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        y = layer(x)
    x.copy_(torch.randn(64, 128, device=DEV))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(y, F.linear(x, layer.weight * layer.mask, layer.bias)) < 1e-5


def _check_conv(geometry, sparsity, dtype, seed=0, bias=True):
    n, c, h, w, o, kernel, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(o, c, *kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64) if bias else None
    mask = random_mask(weight.shape, sparsity, gen)
    if o > 1:
        mask[0] = False  # a fully pruned filter
    weight = torch.where(mask, weight, torch.full_like(weight, 1e6))  # the kernels must not read pruned ones
    xr, wr = x.to(dtype).double().requires_grad_(), (weight * mask).to(dtype).double().requires_grad_()
    br = b.to(dtype).double().requires_grad_() if bias else None
    ref = F.conv2d(xr, wr, br, stride, padding, dilation)
    grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], grad_out)
    xs = x.to(dtype).to(DEV).requires_grad_()
    ws = weight.to(dtype).to(DEV).requires_grad_()
    bs = b.to(dtype).to(DEV).requires_grad_() if bias else None
    out = sparse_conv2d(xs, ws, bs, SparseIndex.from_mask(mask.to(DEV)), stride, padding, dilation)
    grads = torch.autograd.grad(out, [t for t in (xs, ws, bs) if t is not None], grad_out.to(dtype).to(DEV))
    tol = TOL[dtype]
    assert out.shape == ref.shape and out.dtype == dtype and out.is_cuda
    assert rel_err(out.cpu(), ref) < tol, "forward"
    assert rel_err(grads[0].cpu(), ref_grads[0]) < tol, "grad_input"
    assert rel_err(grads[1].cpu(), ref_grads[1] * mask) < tol, "grad_weight"
    assert torch.all(grads[1].cpu()[~mask] == 0)
    if bias:
        assert rel_err(grads[2].cpu(), ref_grads[2]) < tol, "grad_bias"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_conv_matches_reference(geometry, sparsity, dtype):
    _check_conv(geometry, sparsity, dtype)


def test_conv_no_bias_and_gradcheck():
    _check_conv((3, 2, 6, 5, 3, (3, 3), 1, 1, 1), 0.5, torch.float64, bias=False)
    gen = torch.Generator().manual_seed(4)
    mask = random_mask((3, 2, 3, 3), 0.5, gen).to(DEV)
    index = SparseIndex.from_mask(mask)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=DEV, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: sparse_conv2d(x, w * mask, b, index, 2, 1, 1), (x, w, b))


def test_masked_conv_layer_on_cuda_matches_cpu():
    torch.manual_seed(0)
    layer = MaskedConv2d(4, 16, 3, padding=1, path="sparse")
    layer.set_mask(random_mask(layer.weight.shape, 0.9, torch.Generator().manual_seed(1)))
    x = torch.randn(8, 4, 10, 10)
    want = layer(x)
    gpu = MaskedConv2d(4, 16, 3, padding=1, path="sparse").to(DEV)
    gpu.load_state_dict(layer.state_dict())
    gpu.set_mask(layer.mask)
    assert gpu.uses_sparse_path(x.to(DEV))
    assert rel_err(gpu(x.to(DEV)).cpu(), want) < 1e-5


def _threshold_both(weights, masks, k):
    """Runs the op on CPU copies and on GPU copies; returns both results and masks."""
    cpu_masks = [m.clone() for m in masks]
    cpu = prune_smallest_([w.clone() for w in weights], cpu_masks, k)
    gpu_masks = [m.to(DEV) for m in masks]
    gpu = prune_smallest_([w.to(DEV) for w in weights], gpu_masks, k)
    return cpu, cpu_masks, gpu, [m.cpu() for m in gpu_masks]


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float64,), (torch.float32, torch.float64)],
                         ids=["f32", "f64", "mixed"])
@pytest.mark.parametrize("seed", range(12))
def test_threshold_same_as_cpu_and_reference(seed, dtypes):
    weights, masks, g = random_case(seed, dtypes)
    for k in ks_for(masks, g):
        want, want_t, want_pruned = reference(weights, masks, k)
        cpu, cpu_masks, gpu, gpu_masks = _threshold_both(weights, masks, k)
        assert (gpu.threshold, gpu.pruned) == (want_t, want_pruned) == (cpu.threshold, cpu.pruned)
        assert all(torch.equal(a, b) for a, b in zip(gpu_masks, want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threshold_large_ties(dtype):
    weights, masks = large_tied_case(dtype)
    kept = sum(int(m.sum()) for m in masks)
    for k in (kept // 5, kept // 2 + 1, kept):
        cpu, cpu_masks, gpu, gpu_masks = _threshold_both(weights, masks, k)
        assert (gpu.threshold, gpu.pruned) == (cpu.threshold, cpu.pruned)
        assert all(torch.equal(a, b) for a, b in zip(gpu_masks, cpu_masks))


def test_prune_model_on_cuda_gives_cpu_masks():
    torch.manual_seed(3)
    cpu_model = masked(torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3), torch.nn.Flatten(),
                                           torch.nn.Linear(16 * 8 * 8, 128), torch.nn.ReLU(), torch.nn.Linear(128, 6)))
    gpu_model = masked(torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3), torch.nn.Flatten(),
                                           torch.nn.Linear(16 * 8 * 8, 128), torch.nn.ReLU(), torch.nn.Linear(128, 6)))
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to(DEV)
    for rate in (0.5, 0.5, 0.8):
        a = prune_model(cpu_model, PruneConfig(rate=rate))
        b = prune_model(gpu_model, PruneConfig(rate=rate))
        assert (a.threshold, a.pruned) == (b.threshold, b.pruned)
        for (n1, m1), (n2, m2) in zip(cpu_model.named_buffers(), gpu_model.named_buffers()):
            assert n1 == n2 and torch.equal(m1, m2.cpu()), n1
    x = torch.randn(5, 4, 10, 10)
    assert rel_err(gpu_model(x.to(DEV)).cpu(), cpu_model(x)) < 1e-5


def test_threshold_errors_leave_masks():
    w = [torch.randn(4, 5, device=DEV), torch.randn(300_000, device=DEV)]
    w[1][123_456] = math.nan
    masks = [torch.ones(4, 5, dtype=torch.bool, device=DEV), torch.ones(300_000, dtype=torch.bool, device=DEV)]
    with pytest.raises(ValueError, match=r"actor\.2.*non-finite.*123456"):
        prune_smallest_(w, masks, 10, names=["actor.0", "actor.2"])
    assert all(bool(m.all()) for m in masks)
    w[1][123_456] = 0.0
    with pytest.raises(ValueError, match="k=400000"):
        prune_smallest_(w, masks, 400_000)
    with pytest.raises(ValueError, match="cpu"):
        prune_smallest_([w[0], torch.randn(3)], [masks[0], torch.ones(3, dtype=torch.bool)], 1)
    assert all(bool(m.all()) for m in masks)
