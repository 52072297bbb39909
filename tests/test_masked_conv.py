"""Masked conv2d: the compiled sparse kernels against a float64 torch reference, and the layer."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery_fast import _core
from lottery_fast.nn.conv import DEFAULT_SPARSE_THRESHOLD, MaskedConv2d, sparse_conv2d
from lottery_fast.nn.sparse_index import SparseIndex

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    scale = ref.norm().item()
    diff = (a - ref).norm().item()
    return diff / scale if scale > 0 else diff


def random_mask(shape, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly round((1 - sparsity) * numel) kept weights at random positions."""
    numel = int(torch.Size(shape).numel())
    keep = round((1.0 - sparsity) * numel)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[:keep]] = True
    return mask.view(shape)


def check_against_reference(n, c, h, w, o, kernel, stride, padding, dilation, sparsity, dtype, algo,
                            seed=0, prune_channels=(), bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(o, c, *kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64) if bias else None
    mask = random_mask(weight.shape, sparsity, gen)
    for ch in prune_channels:
        mask[ch] = False
    # Pruned entries hold garbage: the kernel must never read them.
    weight = torch.where(mask, weight, torch.full_like(weight, 1e6))

    # Reference: float64 torch conv of the masked weight, on the same (rounded) values.
    xr, wr = x.to(dtype).double().requires_grad_(), (weight * mask).to(dtype).double().requires_grad_()
    br = b.to(dtype).double().requires_grad_() if bias else None
    ref = F.conv2d(xr, wr, br, stride, padding, dilation)
    grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], grad_out)

    xs = x.to(dtype).requires_grad_()
    ws = weight.to(dtype).requires_grad_()
    bs = b.to(dtype).requires_grad_() if bias else None
    out = sparse_conv2d(xs, ws, bs, SparseIndex.from_mask(mask), stride, padding, dilation, algo=algo)
    assert out.shape == ref.shape and out.dtype == dtype
    grads = torch.autograd.grad(out, [t for t in (xs, ws, bs) if t is not None], grad_out.to(dtype))

    tol = TOL[dtype]
    assert rel_err(out, ref) < tol, "forward"
    assert rel_err(grads[0], ref_grads[0]) < tol, "grad_input"
    assert rel_err(grads[1], ref_grads[1] * mask) < tol, "grad_weight"
    assert torch.all(grads[1][~mask] == 0), "pruned weights must get exactly zero gradient"
    if bias:
        assert rel_err(grads[2], ref_grads[2]) < tol, "grad_bias"


# (n, c, h, w, o, kernel, stride, padding, dilation)
GEOMETRIES = [
    (1, 3, 7, 9, 4, (3, 3), 1, 1, 1),
    (2, 3, 7, 9, 5, (1, 1), 1, 0, 1),
    (3, 3, 7, 9, 4, (5, 3), 2, 2, 1),
    (1, 3, 7, 9, 3, (5, 3), 1, "same", 1),
    (5, 2, 9, 7, 4, (3, 3), 2, 1, 2),
    (9, 3, 7, 9, 6, (3, 3), 1, 2, 2),
    (11, 4, 10, 10, 5, (3, 3), 1, "same", 2),
    (17, 3, 7, 9, 4, (5, 3), 2, 0, 1),
    (8, 2, 12, 12, 3, (4, 4), 1, "same", 1),  # even kernel: asymmetric "same" padding
    (9, 4, 13, 11, 4, (4, 4), 2, "valid", 1),
    (19, 2, 21, 21, 3, (8, 8), 4, 0, 1),  # Atari-like stride 4; rows/cols left over at the border
    (16, 16, 10, 10, 16, (3, 3), 1, 0, 1),  # MinAtar-like, exactly two float32 batch blocks
    (6, 2, 9, 8, 3, (3, 2), 1, 0, (2, 1)),  # unpadded stride 1: flat reads x in place
    (5, 2, 10, 11, 3, (1, 2), 3, 0, 1),  # stride > kernel: input pixels no window reads
    (4, 3, 12, 13, 2, (3, 4), (2, 3), (1, 2), (2, 1)),  # per-axis stride, padding, dilation
    (13, 2, 3, 2, 3, (5, 5), 1, 2, 1),  # kernel larger than the input
]
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def _geometry_id(g) -> str:
    part = lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    return "n{}c{}_{}x{}_o{}_k{}_s{}_p{}_d{}".format(*g[:5], *map(part, g[5:]))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("algo", ["direct", "blocked", "flat"])
def test_matches_reference(geometry, dtype, algo):
    for i, sparsity in enumerate(SPARSITIES):
        check_against_reference(*geometry, sparsity=sparsity, dtype=dtype, algo=algo, seed=i)


@pytest.mark.parametrize("algo", ["auto", "direct", "blocked", "flat"])
def test_fully_pruned_output_channels_and_no_bias(algo):
    # Channels 0 and 2 have no kept weight: their output is the bias alone and their grads are 0.
    for bias, sparsity in itertools.product((True, False), (0.0, 0.7)):
        check_against_reference(10, 3, 7, 9, 4, (3, 3), 1, 1, 1, sparsity, torch.float32, algo,
                                prune_channels=(0, 2), bias=bias)


@pytest.mark.parametrize("algo", ["direct", "blocked", "flat"])
def test_gradcheck_float64(algo):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = random_mask((3, 2, 3, 2), 0.5, gen)
    mask[1] = False
    w = (torch.randn(3, 2, 3, 2, generator=gen, dtype=torch.float64) * mask).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    index = SparseIndex.from_mask(mask)
    for stride, padding, dilation in [(1, 1, 1), (2, (2, 1), (1, 2)), (1, "same", 1)]:
        fn = lambda x_, w_, b_: sparse_conv2d(x_, w_, b_, index, stride, padding, dilation, algo=algo)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("algo", ["direct", "blocked", "flat"])
def test_results_do_not_depend_on_thread_count(algo):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(37, 5, 11, 11, generator=gen)
    mask = random_mask((7, 5, 3, 3), 0.6, gen)
    w = torch.randn(7, 5, 3, 3, generator=gen) * mask
    index = SparseIndex.from_mask(mask)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
            out = sparse_conv2d(xs, ws, None, index, 1, 1, algo=algo)
            out.backward(torch.ones_like(out))
            results.append((out, xs.grad, ws.grad))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_functional_errors():
    index = SparseIndex.from_mask(torch.ones(4, 3, 3, 3, dtype=torch.bool))
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"input has 2 channels.*\(2, 2, 8, 8\).*expects 3"):
        sparse_conv2d(torch.randn(2, 2, 8, 8), w, None, index)
    with pytest.raises(ValueError, match="index is"):
        sparse_conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 5, 5), None, index)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        sparse_conv2d(torch.randn(2, 3, 2, 8), w, None, index)
    with pytest.raises(ValueError, match="padding must be"):
        sparse_conv2d(torch.randn(2, 3, 8, 8), w, None, index, padding="full")
    with pytest.raises(TypeError, match="dtype"):
        sparse_conv2d(torch.randn(2, 3, 8, 8, dtype=torch.float64), w, None, index)
    with pytest.raises(ValueError, match="algo"):
        sparse_conv2d(torch.randn(2, 3, 8, 8), w, None, index, algo="im2col")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        sparse_conv2d(torch.randn(2, 3, 8, 8), w, None, index, stride=0)


def test_core_rejects_mismatched_index():
    g = _core.ConvGeometry(n=1, c=1, h=4, w=4, o=2, kh=3, kw=3, oh=2, ow=2)
    row_ptr = torch.tensor([0, 5, 99], dtype=torch.int64)  # claims more kept weights than o*k
    col_idx = torch.zeros(99, dtype=torch.int32)
    x, w, out = torch.zeros(16), torch.zeros(18), torch.zeros(8)
    with pytest.raises(ValueError, match="index does not match"):
        _core.masked_conv2d_forward(g, x.data_ptr(), w.data_ptr(), 0, out.data_ptr(), row_ptr.data_ptr(),
                                    col_idx.data_ptr(), 99, 0)
    # auto: blocked for larger batches, flat below; direct only when asked for
    assert _core.masked_conv2d_algo(g) == 3
    assert _core.masked_conv2d_algo(_core.ConvGeometry(n=64, c=1, h=4, w=4, o=2, kh=3, kw=3, oh=2, ow=2)) == 2
    strided = dict(c=1, h=5, w=5, o=2, kh=3, kw=3, oh=2, ow=2, sh=2, sw=2)
    assert _core.masked_conv2d_algo(_core.ConvGeometry(n=1, **strided)) == 3
    assert _core.masked_conv2d_algo(_core.ConvGeometry(n=64, **strided)) == 2
    assert _core.masked_conv2d_algo(_core.ConvGeometry(n=64, **strided), 1) == 1
    with pytest.raises(ValueError, match="algo must be"):
        _core.masked_conv2d_algo(_core.ConvGeometry(n=64, **strided), 7)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------

def pruned_layer(sparsity: float, seed: int = 0, **kwargs) -> MaskedConv2d:
    torch.manual_seed(seed)
    layer = MaskedConv2d(3, 6, 3, **kwargs)
    layer.set_mask(random_mask(layer.weight.shape, sparsity, torch.Generator().manual_seed(seed)))
    return layer


def test_empty_batch():
    layer = pruned_layer(0.5, padding=1, path="sparse")
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 6, 8, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.all(layer.weight.grad == 0) and torch.all(layer.bias.grad == 0)


@pytest.mark.parametrize("padding", [0, 1, "same", "valid", (2, 1)])
def test_layer_sparse_and_dense_paths_agree(padding):
    layer = pruned_layer(0.8, padding=padding, stride=1, dilation=(1, 2))
    twin = copy.deepcopy(layer)
    layer.path, twin.path = "sparse", "dense"
    x = torch.randn(10, 3, 9, 11)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = layer(x1), twin(x2)
    assert layer.uses_sparse_path(x) and not twin.uses_sparse_path(x)
    assert rel_err(y1, y2) < 1e-5
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert rel_err(x1.grad, x2.grad) < 1e-5
    assert rel_err(layer.weight.grad, twin.weight.grad) < 1e-5
    assert rel_err(layer.bias.grad, twin.bias.grad) < 1e-5
    assert torch.all(layer.weight.grad[~layer.mask] == 0)


def test_auto_path_follows_sparse_threshold():
    x = torch.randn(4, 3, 8, 8)
    layer = pruned_layer(0.0)
    assert layer.path == "auto" and layer.sparse_threshold == DEFAULT_SPARSE_THRESHOLD
    assert not layer.uses_sparse_path(x)
    layer.set_mask(random_mask(layer.weight.shape, 0.95, torch.Generator().manual_seed(0)))
    assert layer.uses_sparse_path(x)
    layer.sparse_threshold = 0.99
    assert not layer.uses_sparse_path(x)
    layer.path = "sparse"
    assert layer.uses_sparse_path(x)
    with pytest.raises(ValueError, match="path"):
        layer.path = "fast"
    with pytest.raises(ValueError, match="sparse_threshold"):
        layer.sparse_threshold = 1.5
    with pytest.raises(ValueError, match="path"):
        MaskedConv2d(3, 4, 3, path="gpu")


def test_non_cpu_tensors_run_dense():
    # "meta" stands in for a GPU: the layer must not hand non-CPU memory to the compiled kernel.
    layer = MaskedConv2d(3, 4, 3, path="sparse").to("meta")
    x = torch.empty(2, 3, 8, 8, device="meta")
    assert not layer.uses_sparse_path(x)
    y = layer(x)
    assert y.device.type == "meta" and y.shape == (2, 4, 6, 6)


@pytest.mark.parametrize("kwargs, x", [
    (dict(groups=3), torch.randn(2, 3, 8, 8)),
    (dict(padding=1, padding_mode="reflect"), torch.randn(2, 3, 8, 8)),
    (dict(), torch.randn(2, 3, 8, 8, dtype=torch.float16)),
])
def test_unsupported_configurations_run_dense(kwargs, x):
    layer = MaskedConv2d(3, 6, 3, path="sparse", dtype=x.dtype, **kwargs)
    layer.set_mask(random_mask(layer.weight.shape, 0.9, torch.Generator().manual_seed(0)))
    assert not layer.uses_sparse_path(x)
    ref = layer._conv_forward(x.float(), (layer.weight * layer.mask).float(),
                              None if layer.bias is None else layer.bias.float())
    assert torch.allclose(layer(x).float(), ref, atol=1e-2)


def test_layer_input_handling():
    layer = pruned_layer(0.9, padding=1, path="sparse")
    x = torch.randn(8, 3, 10, 12)
    expected = F.conv2d(x, layer.weight * layer.mask, layer.bias, padding=1)
    # Non-contiguous input (channels-last view, and a strided slice) gives the same result.
    assert rel_err(layer(x.to(memory_format=torch.channels_last)), expected) < 1e-5
    wide = torch.randn(8, 3, 10, 24)
    assert rel_err(layer(wide[..., ::2]), F.conv2d(wide[..., ::2], layer.weight * layer.mask, layer.bias,
                                                   padding=1)) < 1e-5
    # Unbatched input, like nn.Conv2d.
    assert rel_err(layer(x[0]), expected[0]) < 1e-5
    with pytest.raises(ValueError, match=r"expected input \[N, 3, H, W\].*\(8, 4, 10, 12\).*weight shape"):
        layer(torch.randn(8, 4, 10, 12))
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(3, 10))
    with torch.no_grad():
        assert rel_err(layer(x), expected) < 1e-5


def test_mask_change_rebuilds_index_and_training_keeps_pruned_weights_zero():
    layer = pruned_layer(0.5, padding=1, path="sparse")
    x = torch.randn(9, 3, 8, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    assert torch.all(layer.weight[~layer.mask] == 0)
    with torch.no_grad():
        layer.weight.add_(1.0)  # a manual edit revives pruned weights...
    y = layer(x)  # ...and the next forward zeroes them again
    assert torch.all(layer.weight[~layer.mask] == 0)
    assert rel_err(y, F.conv2d(x, layer.weight, layer.bias, padding=1)) < 1e-5
    layer.set_mask(random_mask(layer.weight.shape, 0.9, torch.Generator().manual_seed(3)))
    assert rel_err(layer(x), F.conv2d(x, layer.weight * layer.mask, layer.bias, padding=1)) < 1e-5


def test_from_dense_to_dense_round_trip():
    dense = nn.Conv2d(3, 5, (3, 2), stride=2, padding=1, dilation=(2, 1))
    masked = MaskedConv2d.from_dense(dense, path="sparse", sparse_threshold=0.8)
    assert masked.path == "sparse" and masked.sparse_threshold == 0.8
    assert set(masked.state_dict()) == set(dense.state_dict())
    x = torch.randn(4, 3, 11, 9)
    assert rel_err(masked(x), dense(x)) < 1e-5
    masked.set_mask(random_mask(masked.weight.shape, 0.7, torch.Generator().manual_seed(0)))
    back = masked.to_dense()
    assert type(back) is nn.Conv2d
    assert rel_err(back(x), masked(x)) < 1e-5
    assert "path=sparse" in repr(masked)
