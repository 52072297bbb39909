"""The core's vector tanh (lottery_fast.nn.activation) against a float64 reference."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from lottery_fast import _core
from lottery_fast.nn.activation import Tanh, tanh

SHAPES = [(0,), (1,), (7,), (15,), (16,), (17,), (3, 5), (20, 4, 64), (20, 128, 64), (2, 3, 33)]


def _ulps(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest distance from the float64 reference, in units of the result dtype's spacing at it."""
    if y.numel() == 0:
        return 0.0
    eps = torch.finfo(y.dtype).eps
    spacing = (ref.abs() * eps).clamp(min=torch.finfo(y.dtype).tiny)
    return float(((y.double() - ref) / spacing).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64(shape, dtype):
    g = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    ref = torch.tanh(x.double())
    y = tanh(x)
    assert y.dtype == dtype and y.shape == x.shape
    # glibc documents at most 4 ulp for its vector tanh; measured here: 1-2
    assert _ulps(y, ref) <= 4


def test_range_and_special_values():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-6, 0.5, 8.0, 9.5, 20.0, -20.0, 88.0, 1e30, -1e30,
                      float("inf"), float("-inf")])
    y = tanh(x)
    ref = torch.tanh(x.double())
    assert _ulps(y, ref) <= 4
    assert torch.equal(y[[8, 9, 13, 14]], torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert torch.signbit(y[1]) and not torch.signbit(y[0])
    assert bool(tanh(torch.tensor([float("nan")])).isnan().all())
    assert bool((y.abs() <= 1).all())


def test_position_independent():
    """An element's result depends only on its value: the tail block goes through the same vector call."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * 4
    full = tanh(x)
    for start in (0, 1, 3, 7, 15, 16, 17, 999):
        for stop in (start + 1, start + 5, 1000):
            if stop > 1000:
                continue
            assert torch.equal(tanh(x[start:stop].clone()), full[start:stop]), (start, stop)


def test_non_contiguous_and_in_graph():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    y = tanh(x.t())
    assert torch.allclose(y, torch.tanh(x.t()), rtol=1e-15, atol=0)
    assert torch.allclose(tanh(x[:, ::2]), torch.tanh(x[:, ::2]), rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape", [(5,), (4, 17), (3, 2, 16)])
def test_backward_matches_float64(shape):
    g = torch.Generator().manual_seed(2)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x64.float().requires_grad_()
    (tanh(x) * w.float()).sum().backward()
    ref = w * (1 - torch.tanh(x64) ** 2)
    assert torch.allclose(x.grad.double(), ref, rtol=1e-5, atol=1e-6)


def test_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(tanh, (x,))
    assert torch.autograd.gradgradcheck(tanh, (x,))


def test_other_inputs_go_to_torch():
    x = torch.randn(4, 4).to(torch.bfloat16)
    assert torch.equal(tanh(x), torch.tanh(x))
    xi = torch.arange(5)
    assert torch.equal(tanh(xi), torch.tanh(xi))


def test_module_and_no_grad():
    m = Tanh()
    assert list(m.state_dict()) == [] and list(m.parameters()) == []
    x = torch.randn(4, 9, requires_grad=True)
    with torch.no_grad():
        y = m(x)
    assert y.grad_fn is None
    assert m(x).grad_fn is not None


def test_core_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        _core.tanh(0, 0, -1, 0)
    with pytest.raises(ValueError, match="null"):
        _core.tanh(0, 0, 3, 0)
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="dtype"):
        _core.tanh(x.data_ptr(), x.data_ptr(), 3, 7)
    assert _core.tanh_impl in ("libmvec", "scalar")


_NARROW = """
import torch
from lottery_fast import _core
from lottery_fast.nn.activation import tanh
assert _core.isa() == {isa!r}, _core.isa()
for dtype in (torch.float32, torch.float64):
    x = torch.randn(2, 37, dtype=dtype) * 3
    ref = torch.tanh(x.double())
    eps = torch.finfo(dtype).eps
    err = ((tanh(x).double() - ref) / (ref.abs() * eps).clamp(min=torch.finfo(dtype).tiny)).abs().max()
    assert err <= 4, (dtype, float(err))
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_isa(isa):
    """The AVX2 and SSE stamps, forced through LOTTERY_FAST_ISA in a subprocess."""
    import lottery_fast

    order = ["baseline", "avx2", "avx512"]
    if order.index(isa) > order.index(_core.isa()):
        pytest.skip(f"the CPU runs {_core.isa()} only")
    root = pathlib.Path(lottery_fast.__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", _NARROW.format(isa=isa)], capture_output=True, text=True,
                         env=dict(os.environ, LOTTERY_FAST_ISA=isa, PYTHONPATH=str(root)), timeout=120,
                         cwd=pathlib.Path(__file__).resolve().parent)
    assert run.returncode == 0, run.stderr[-3000:]
