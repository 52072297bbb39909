"""Packed layers (nn/packed.py): only the kept weights are parameters.

Checked against a float64 dense reference (``F.linear``/``F.conv2d`` with ``weight * mask``) on
fresh random inputs: forward, input gradient, gradient of the kept values, bias gradient; on both
paths (compiled kernels and the dense fallback), several shapes and sparsities including an empty
layer, fully pruned rows and columns, and odd sizes. Optimizer steps equal the masked-dense
layer's on the kept weights; state dicts load both ways; masks change by repacking.
"""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottery_fast as lf
from lottery_fast.nn import (MaskedConv2d, MaskedLinear, PackedConv2d, PackedLinear, get_masks, masked,
                             masked_modules, packed, set_masks, unpacked)
from lottery_fast.prune import PruneConfig, prune_model

PATHS = ("sparse", "dense")


def _mask(shape, density: float, gen: torch.Generator, empty_row: bool = True, empty_col: bool = True):
    m = torch.rand(shape, generator=gen) < density
    if empty_row and shape[0] > 1:
        m[shape[0] // 2] = False  # a fully pruned output
    if empty_col and m[0].numel() > 1:
        m.view(shape[0], -1)[:, -1] = False  # a fully pruned input column
    return m


def _masked_linear(n_in, n_out, density, gen, bias=True):
    layer = MaskedLinear(n_in, n_out, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen, dtype=torch.float64))
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen, dtype=torch.float64))
    layer.set_mask(_mask((n_out, n_in), density, gen))
    return layer


def _masked_conv(c, o, k, density, gen, **kw):
    layer = MaskedConv2d(c, o, k, dtype=torch.float64, **kw)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(o, generator=gen, dtype=torch.float64))
    layer.set_mask(_mask(tuple(layer.weight.shape), density, gen))
    return layer


def _check_against_reference(packed_layer, masked_layer, x, ref_fn, tol=1e-10):
    """Forward and all gradients of ``packed_layer`` against ``ref_fn(x, W*M, b)`` in float64."""
    w_ref = (masked_layer.weight.detach() * masked_layer.mask).requires_grad_()
    b_ref = None if masked_layer.bias is None else masked_layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    y = packed_layer(x)
    y_ref = ref_fn(x_ref, w_ref, b_ref)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=tol, rtol=tol)
    assert packed_layer.values.grad.shape == (packed_layer.nnz,)
    torch.testing.assert_close(packed_layer.values.grad, w_ref.grad[masked_layer.mask], atol=tol, rtol=tol)
    if b_ref is not None:
        torch.testing.assert_close(packed_layer.bias.grad, b_ref.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n_in,n_out,batch,density", [
    (37, 23, 11, 0.3), (64, 64, 5, 0.1), (200, 130, 67, 0.05), (9, 300, 3, 0.5), (48, 17, 1, 1.0),
    (31, 29, 13, 0.0),  # nnz = 0
])
def test_linear_matches_float64_reference(path, n_in, n_out, batch, density):
    gen = torch.Generator().manual_seed(n_in * 1000 + n_out)
    layer = _masked_linear(n_in, n_out, density, gen)
    p = PackedLinear.from_masked(layer, path=path)
    x = torch.randn(batch, n_in, generator=gen, dtype=torch.float64)
    assert p.uses_sparse_path(x) == (path == "sparse")
    assert p.nnz == int(layer.mask.sum())
    _check_against_reference(p, layer, x, F.linear)


@pytest.mark.parametrize("path", PATHS)
def test_linear_without_bias_and_3d_input(path):
    gen = torch.Generator().manual_seed(3)
    layer = _masked_linear(19, 21, 0.2, gen, bias=False)
    p = PackedLinear.from_masked(layer, path=path)
    x = torch.randn(4, 5, 19, generator=gen, dtype=torch.float64)
    _check_against_reference(p, layer, x, F.linear)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("c,o,k,hw,batch,kw,density", [
    (5, 7, 3, 9, 4, dict(padding=1), 0.3),
    (16, 16, 3, 10, 13, dict(padding=1), 0.05),
    (4, 6, 4, 12, 3, dict(stride=2), 0.5),
    (3, 5, 3, 8, 2, dict(dilation=2, bias=False), 0.4),
    (6, 4, 3, 7, 5, dict(padding=1), 0.0),  # nnz = 0
])
def test_conv_matches_float64_reference(path, c, o, k, hw, batch, kw, density):
    gen = torch.Generator().manual_seed(c * 100 + o)
    layer = _masked_conv(c, o, k, density, gen, **kw)
    p = PackedConv2d.from_masked(layer, path=path)
    x = torch.randn(batch, c, hw, hw, generator=gen, dtype=torch.float64)
    assert p.uses_sparse_path(x) == (path == "sparse")

    def ref(x, w, b):
        return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation)

    _check_against_reference(p, layer, x, ref)


def test_conv_unbatched_input_and_reflect_padding_fallback():
    gen = torch.Generator().manual_seed(4)
    layer = _masked_conv(3, 4, 3, 0.5, gen, padding=1)
    p = PackedConv2d.from_masked(layer, path="sparse")
    x = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(p(x), layer(x))
    reflect = _masked_conv(3, 4, 3, 0.5, gen, padding=1, padding_mode="reflect")
    pr = PackedConv2d.from_masked(reflect, path="sparse")
    xb = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    assert not pr.uses_sparse_path(xb)  # the kernels take zero padding only
    torch.testing.assert_close(pr(xb), reflect(xb))


def test_gradcheck_linear_and_conv():
    gen = torch.Generator().manual_seed(5)
    lin = PackedLinear.from_masked(_masked_linear(7, 6, 0.5, gen), path="sparse")
    x = torch.randn(3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: _call_with(lin, x, v, b), (x, lin.values, lin.bias))
    conv = PackedConv2d.from_masked(_masked_conv(2, 3, 3, 0.5, gen, padding=1), path="sparse")
    xc = torch.randn(2, 2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: _call_with(conv, x, v, b), (xc, conv.values, conv.bias))


def _call_with(layer, x, values, bias):
    """layer(x) with its values and bias replaced by the given tensors (for gradcheck)."""
    old_v, old_b = layer.values.data, layer.bias.data
    try:
        layer._parameters["values"], layer._parameters["bias"] = values, bias
        return layer(x)
    finally:
        layer._parameters["values"], layer._parameters["bias"] = nn.Parameter(old_v), nn.Parameter(old_b)


def _optimizers():
    opts = [("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
            ("sgd_nesterov_foreach", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                               weight_decay=0.01, foreach=True)),
            ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=False)),
            ("adamw_foreach", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=True)),
            ("adam_wd", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, foreach=True))]
    try:  # fused CPU optimizers exist from torch 2.4
        torch.optim.AdamW([nn.Parameter(torch.zeros(1))], fused=True)
        opts.append(("adamw_fused", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True)))
        opts.append(("sgd_fused", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, fused=True)))
    except (RuntimeError, TypeError, ValueError):
        pass
    return opts


@pytest.mark.parametrize("name,make_opt", _optimizers(), ids=[n for n, _ in _optimizers()])
@pytest.mark.parametrize("path", PATHS)
def test_optimizer_steps_equal_masked_dense_on_kept_weights(name, make_opt, path):
    gen = torch.Generator().manual_seed(6)
    net = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 9)).double()
    m = masked(net)
    set_masks(m, {n: _mask(tuple(l.weight.shape), 0.4, gen) for n, l in masked_modules(m).items()})
    p = packed(m, path=path)
    opt_m, opt_p = make_opt(m.parameters()), make_opt(p.parameters())
    for _ in range(4):
        x = torch.randn(16, 12, generator=gen, dtype=torch.float64)
        for model, opt in ((m, opt_m), (p, opt_p)):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
    for (k, a), (k2, b) in zip(m.state_dict().items(), p.state_dict().items()):
        assert k == k2
        a = a * m.get_submodule(k.rsplit(".", 1)[0]).mask if k.endswith("weight") else a
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)


def test_parameters_are_the_kept_values_only():
    gen = torch.Generator().manual_seed(7)
    layer = _masked_linear(30, 20, 0.1, gen)
    p = PackedLinear.from_masked(layer)
    names = [n for n, _ in p.named_parameters()]
    assert names == ["values", "bias"]
    assert p.values.shape == (int(layer.mask.sum()),)
    torch.testing.assert_close(p.values.detach(), layer.weight.detach()[layer.mask])
    torch.testing.assert_close(p.dense_weight(), layer.weight.detach() * layer.mask)


def test_state_dict_round_trips():
    gen = torch.Generator().manual_seed(8)
    layer = _masked_linear(13, 11, 0.3, gen)
    p = PackedLinear.from_masked(layer)
    sd = p.state_dict()
    assert list(sd) == ["weight", "bias"] and sd["weight"].shape == (11, 13)
    torch.testing.assert_close(sd["weight"], layer.weight.detach() * layer.mask)
    # packed -> nn.Linear, MaskedLinear and back
    plain = nn.Linear(13, 11).double()
    plain.load_state_dict(sd)
    other = PackedLinear.from_masked(_masked_linear(13, 11, 1.0, gen))
    other.set_mask(layer.mask)
    other.load_state_dict(plain.state_dict())
    torch.testing.assert_close(other.values, p.values)
    torch.testing.assert_close(other.bias, p.bias)
    # a dense state dict into a packed layer takes the kept positions only
    dense_sd = {"weight": torch.randn(11, 13, generator=gen, dtype=torch.float64), "bias": torch.zeros(11).double()}
    p.load_state_dict(dense_sd)
    torch.testing.assert_close(p.values.detach(), dense_sd["weight"][layer.mask])
    # whole models, strict errors name the problem
    model = packed(masked(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))))
    ref = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    ref.load_state_dict(model.state_dict())
    model.load_state_dict(ref.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        model.load_state_dict({**ref.state_dict(), "0.weight": torch.zeros(3, 5)})
    with pytest.raises(RuntimeError, match="Missing key.*2.bias"):
        model.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "2.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key.*0.extra"):
        model.load_state_dict({**ref.state_dict(), "0.extra": torch.zeros(1)})


def test_conv_state_dict_round_trip():
    gen = torch.Generator().manual_seed(9)
    layer = _masked_conv(3, 5, 3, 0.4, gen, padding=1)
    p = PackedConv2d.from_masked(layer)
    plain = nn.Conv2d(3, 5, 3, padding=1).double()
    plain.load_state_dict(p.state_dict())
    torch.testing.assert_close(plain.weight, layer.weight * layer.mask)
    back = p.to_masked()
    assert torch.equal(back.mask, layer.mask)
    torch.testing.assert_close(back.weight, layer.weight * layer.mask)


def test_repack_after_mask_changes():
    gen = torch.Generator().manual_seed(10)
    layer = _masked_linear(16, 12, 0.6, gen)
    p = PackedLinear.from_masked(layer, path="sparse")
    values = p.values
    dense = p.dense_weight()
    # pruning more: the survivors keep their values, the Parameter object stays, its length shrinks
    new_mask = layer.mask & (torch.rand(12, 16, generator=gen) < 0.5)
    p.set_mask(new_mask)
    assert p.values is values and p.values.shape == (int(new_mask.sum()),)
    torch.testing.assert_close(p.dense_weight(), dense * new_mask)
    # an in-place write through torch is seen at the next forward
    p.mask[0] = False
    x = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    y = p(x)
    assert p.nnz == int((new_mask & torch.arange(12).unsqueeze(1).ne(0)).sum())
    torch.testing.assert_close(y, F.linear(x, dense * p.mask, p.bias))
    # a regrown weight starts at 0
    grown = p.mask.clone()
    grown[0, 0] = True
    p.set_mask(grown)
    assert p.dense_weight()[0, 0] == 0
    with pytest.raises(ValueError, match="mask shape"):
        p.set_mask(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be bool"):
        p.set_mask(torch.full((12, 16), 0.5))


def test_prune_model_on_packed_equals_masked():
    gen = torch.Generator().manual_seed(11)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(), nn.Linear(10, 4)).double()
    m = masked(net)
    set_masks(m, {n: _mask(tuple(l.weight.shape), 0.7, gen, False, False) for n, l in masked_modules(m).items()})
    # a few ties across and within layers
    with torch.no_grad():
        m[0].weight[0, :5] = 0.01
        m[2].weight[1, :5] = -0.01
    p = packed(m)
    for config in (PruneConfig(rate=0.3), PruneConfig(rate=0.5, scope="layerwise"),
                   PruneConfig(rate=0.2, layer_rates=(("4", 0.1),))):
        rm = prune_model(m, config)
        rp = prune_model(p, config)
        assert rm.pruned == rp.pruned and rm.threshold == rp.threshold and rm.density == rp.density
        for name, mask in get_masks(m).items():
            assert torch.equal(mask, get_masks(p)[name])
        for k, v in m.state_dict().items():
            torch.testing.assert_close(p.state_dict()[k], v, atol=0, rtol=0)


def test_empty_layer():
    gen = torch.Generator().manual_seed(12)
    layer = _masked_linear(8, 5, 0.0, gen)
    p = PackedLinear.from_masked(layer, path="sparse")
    assert p.nnz == 0 and p.density == 0.0
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    y = p(x)
    torch.testing.assert_close(y, p.bias.detach().expand(4, 5))
    y.sum().backward()
    assert p.values.grad.shape == (0,) and torch.count_nonzero(x.grad) == 0
    opt = torch.optim.AdamW(p.parameters(), weight_decay=0.1, foreach=True)
    opt.step()  # an empty parameter steps without error


def test_copies_moves_and_pickle():
    gen = torch.Generator().manual_seed(13)
    model = packed(nn.Sequential(_masked_linear(10, 8, 0.3, gen), nn.Tanh(),
                                 _masked_conv(1, 2, 3, 0.5, gen).float().double()).double()[:1])
    x = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    y = model(x)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x), y)
    assert twin[0].values is not model[0].values and torch.equal(twin[0].mask, model[0].mask)
    restored = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(restored(x), y)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), y)
    f32 = copy.deepcopy(model).float()
    assert f32[0].values.dtype == torch.float32
    torch.testing.assert_close(f32(x.float()), y.float(), atol=1e-5, rtol=1e-5)
    # a pending in-place mask change is packed before a copy
    model[0].mask[1] = False
    twin = copy.deepcopy(model)
    assert twin[0].nnz == int(model[0].mask.sum())


def test_packed_and_unpacked_models():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    m = masked(net)
    gen = torch.Generator().manual_seed(14)
    set_masks(m, {"0": _mask((4, 2, 3, 3), 0.5, gen), "3": _mask((8, 64), 0.05, gen), "5": torch.ones(3, 8, dtype=torch.bool)})
    p = packed(m, min_sparsity=0.4)
    assert isinstance(p[0], PackedConv2d) and isinstance(p[3], PackedLinear) and isinstance(p[5], MaskedLinear)
    assert isinstance(m[0], MaskedConv2d)  # not in place
    assert list(masked_modules(p)) == ["0", "3", "5"]
    x = torch.randn(3, 2, 6, 6, generator=gen)
    torch.testing.assert_close(p(x), m(x))
    u = unpacked(p)
    assert [type(layer) for layer in masked_modules(u).values()] == [MaskedConv2d, MaskedLinear, MaskedLinear]
    torch.testing.assert_close(u(x), m(x))
    for name, mask in get_masks(m).items():
        assert torch.equal(get_masks(u)[name], mask)
    same = lf.packed(m, inplace=True)
    assert same is m and isinstance(m[3], PackedLinear)
    with pytest.raises(ValueError, match="min_sparsity"):
        packed(m, min_sparsity=2)
    with pytest.raises(TypeError, match="from_masked"):
        PackedConv2d(1, 2, 3)


def test_direct_construction_and_settings():
    layer = PackedLinear(6, 4, mask=torch.eye(4, 6, dtype=torch.bool))
    assert layer.nnz == 4 and layer.values.dtype == torch.float32
    with pytest.raises(ValueError, match="path"):
        layer.path = "fast"
    with pytest.raises(ValueError, match="sparse_threshold"):
        layer.sparse_threshold = 1.5
    with pytest.raises(ValueError, match="in_features=6"):
        layer(torch.randn(2, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(15)
    layer = _masked_linear(64, 48, 0.1, gen)
    p = PackedLinear.from_masked(layer)
    x = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    pc = copy.deepcopy(p).cuda()
    torch.testing.assert_close(pc(x.cuda()).cpu(), p(x))
    pc(x.cuda()).sum().backward()
    p(x).sum().backward()
    torch.testing.assert_close(pc.values.grad.cpu(), p.values.grad)


# -- IMP with packed training ------------------------------------------------------------------
def test_imp_packed_equals_unpacked(tmp_path, one_thread):
    from lottery_fast.imp import IMPConfig, load_unit, run_imp
    from lottery_fast.train import DigitsConfig, DigitsTrainer

    trainer = DigitsTrainer(DigitsConfig(hidden=(32, 16), epochs=1, batch_size=128, lr=1e-2, weight_decay=1e-4))
    seen = []

    class Spy(DigitsTrainer):
        def train(self, model, seed, rewind_step=None, on_progress=None):
            seen.append(sorted(type(m).__name__ for m in masked_modules(model).values()))
            return super().train(model, seed, rewind_step, on_progress)

    spy = Spy(trainer.config)
    rows, kinds = {}, {}
    for mode in ("off", "on", "auto"):
        cfg = IMPConfig(iterations=2, seeds=(1,), rewind_step=3, packed=mode, prune=PruneConfig(rate=0.5),
                        conditions=("mask/weights", "mask/permuted", "random/reinit"))
        seen.clear()
        rows[mode] = run_imp(spy, cfg, tmp_path / mode).rows
        kinds[mode] = list(seen)
    assert all(k == ["MaskedLinear"] * 3 for k in kinds["off"])
    assert all(k == ["PackedLinear"] * 3 for k in kinds["on"])
    # auto: dense round 0 stays masked; in round 2's ticket (75 % sparse) the hidden layers pack, the
    # output layer (pruned at half rate, 44 %) does not
    assert kinds["auto"][0] == ["MaskedLinear"] * 3 and kinds["auto"][-3] == ["MaskedLinear"] + ["PackedLinear"] * 2
    for mode in ("on", "auto"):
        assert [(r["iteration"], r["condition"]) for r in rows[mode]] == [(r["iteration"], r["condition"])
                                                                           for r in rows["off"]]
        for a, b in zip(rows["off"], rows[mode]):
            assert {k: v for k, v in a.items() if k.startswith("density")} == \
                {k: v for k, v in b.items() if k.startswith("density")}
            assert abs(a["metric"] - b["metric"]) < 1e-6 and a["steps"] == b["steps"]
        for cond in ("mask/weights", "random/reinit"):
            ua, ub = load_unit(tmp_path / "off", 1, 2, cond), load_unit(tmp_path / mode, 1, 2, cond)
            for name in ua["masks"]:
                assert torch.equal(ua["masks"][name], ub["masks"][name])
            for k in ua["start"]:
                assert torch.equal(ua["start"][k], ub["start"][k])
            for k in ua.get("final", {}):
                torch.testing.assert_close(ub["final"][k], ua["final"][k], atol=1e-6, rtol=1e-5)
    # the option is an execution setting: not in config.json, and a packed run resumes an unpacked one
    cfg = IMPConfig(iterations=2, seeds=(1,), rewind_step=3, packed="on", prune=PruneConfig(rate=0.5),
                    conditions=("mask/weights", "mask/permuted", "random/reinit"))
    assert "packed" not in cfg.to_json()
    assert run_imp(spy, cfg, tmp_path / "off").rows == rows["off"]
    with pytest.raises(ValueError, match="packed"):
        IMPConfig(packed="yes")


@pytest.mark.parametrize("make", ["linear", "conv"])
def test_backward_after_repack_or_step_fails_loudly(make):
    gen = torch.Generator().manual_seed(16)
    if make == "linear":
        layer = PackedLinear.from_masked(_masked_linear(12, 10, 0.5, gen), path="sparse")
        x = torch.randn(3, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    else:
        layer = PackedConv2d.from_masked(_masked_conv(2, 3, 3, 0.5, gen), path="sparse")
        x = torch.randn(2, 2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    with torch.no_grad():
        layer.values.mul_(2)  # an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    y = layer(x)
    layer.set_mask(layer.mask & (torch.rand(layer.mask.shape, generator=gen) < 0.5))
    with pytest.raises(RuntimeError, match="mask changed"):
        y.sum().backward()  # the gradient has the old length: never written into the new values
    assert layer.values.grad is None


def test_pack_for_training_modes():
    from lottery_fast.nn.packed import PACK_MIN_SPARSITY, pack_for_training
    from lottery_fast.nn.conv import DEFAULT_SPARSE_THRESHOLD

    def model(linear_sparsity, conv_sparsity):
        m = masked(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 20)))
        gen = torch.Generator().manual_seed(17)
        for layer, s in ((m[0], conv_sparsity), (m[2], linear_sparsity)):
            keep = torch.ones(layer.mask.numel(), dtype=torch.bool)
            keep[torch.randperm(keep.numel(), generator=gen)[: round(s * keep.numel())]] = False
            layer.set_mask(keep.view(layer.mask.shape))
        return m

    between = (PACK_MIN_SPARSITY + DEFAULT_SPARSE_THRESHOLD) / 2
    kinds = lambda m: [type(layer).__name__ for layer in masked_modules(m).values()]  # noqa: E731
    assert kinds(pack_for_training(model(between, between), "auto")) == ["MaskedConv2d", "PackedLinear"]
    assert kinds(pack_for_training(model(0.9, 0.9), "auto")) == ["PackedConv2d", "PackedLinear"]
    assert kinds(pack_for_training(model(0.0, 0.0), "on")) == ["PackedConv2d", "PackedLinear"]
    assert kinds(pack_for_training(model(0.9, 0.9), "off")) == ["MaskedConv2d", "MaskedLinear"]
    with pytest.raises(ValueError, match="mode"):
        pack_for_training(model(0, 0), "always")
