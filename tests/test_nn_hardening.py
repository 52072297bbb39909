"""Issue #19, masked layers and kernels: mask reassignment, malformed indices, pruning while another
thread runs the layer, index memory, the int32 limit, and the narrower-ISA kernels of every family."""
from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

import lottery_fast
from lottery_fast import _core
from lottery_fast.nn import MaskedConv2d, MaskedLinear, masked
from lottery_fast.nn.conv import sparse_conv2d
from lottery_fast.nn.sparse_index import SparseIndex
from lottery_fast.prune import prune_model
from lottery_fast.prune.magnitude import PruneConfig

TESTS = pathlib.Path(__file__).resolve().parent
# the folder lottery_fast was imported from: site-packages when installed, the checkout in development
ROOT = pathlib.Path(lottery_fast.__file__).resolve().parents[1]


def _run_script(script: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]\n"
                           + script], env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=timeout, cwd=TESTS)


def _linear_ref(layer: MaskedLinear, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ (layer.weight.detach().double() * layer.mask).t() + layer.bias.detach().double()


# ---------------------------------------------------------------------------------------------
# 1. mask reassignment and edits
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_reassigned_mask_is_used(path):
    """The loop of the issue: a new mask tensor may land at the freed address of the old one."""
    for trial in range(20):
        torch.manual_seed(trial)
        layer = MaskedLinear(256, 256, path=path)
        x = torch.randn(8, 256)
        layer(x)
        layer.mask = torch.zeros(256, 256, dtype=torch.bool)
        layer.mask = torch.rand(256, 256) < 0.1
        y = layer(x)
        assert torch.allclose(y.double(), _linear_ref(layer, x), atol=1e-4), trial
        assert torch.all(layer.weight[~layer.mask] == 0), trial
        assert layer.density == pytest.approx(float(layer.mask.float().mean()))


def test_reassigned_conv_mask_is_used():
    for trial in range(20):
        torch.manual_seed(trial)
        layer = MaskedConv2d(4, 8, 3, padding=1, path="sparse")
        x = torch.randn(2, 4, 6, 6)
        layer(x)
        layer.mask = torch.zeros_like(layer.mask)
        layer.mask = torch.rand(layer.weight.shape) < 0.2
        ref = torch.nn.functional.conv2d(x.double(), layer.weight.detach().double() * layer.mask,
                                         layer.bias.detach().double(), padding=1)
        assert torch.allclose(layer(x).double(), ref, atol=1e-4), trial


def test_in_place_and_data_edits():
    torch.manual_seed(0)
    layer = MaskedLinear(64, 32, path="sparse")
    x = torch.randn(5, 64)
    layer(x)
    layer.mask[3] = False  # through torch: bumps the tensor's version, seen
    assert torch.allclose(layer(x).double(), _linear_ref(layer, x), atol=1e-4)
    assert torch.all(layer.weight[3] == 0)
    view = layer.mask.view(-1)  # views share the version counter
    view[:64 * 5] = False
    assert torch.allclose(layer(x).double(), _linear_ref(layer, x), atol=1e-4)
    # .data has a version counter of its own: the layer is told by refresh_mask_()
    layer.mask.data[10:20] = False
    layer.refresh_mask_()
    assert torch.allclose(layer(x).double(), _linear_ref(layer, x), atol=1e-4)
    assert torch.all(layer.weight[10:20] == 0)
    assert layer.sparse_index().nnz == int(layer.mask.sum())


def test_mask_assignment_is_validated():
    layer = MaskedLinear(4, 3)
    with pytest.raises(TypeError, match=r"torch.bool tensor of the weight's shape \(3, 4\).*float32"):
        layer.mask = torch.ones(3, 4)
    with pytest.raises(TypeError, match=r"\(3, 4\).*shape \(4, 3\)"):
        layer.mask = torch.ones(4, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="list"):
        layer.mask = [[True] * 4] * 3
    assert [n for n, _ in layer.named_buffers()] == ["mask"]


def test_copies_and_moves_rebuild_from_their_own_mask():
    torch.manual_seed(0)
    layer = MaskedLinear(40, 30, path="sparse")
    layer.set_mask(torch.rand(30, 40) < 0.3)
    x = torch.randn(3, 40)
    layer(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), layer.to(torch.float64).float()):
        assert twin.mask_lock is not None
        twin.mask[:5] = False
        assert torch.allclose(twin(x).double(), _linear_ref(twin, x), atol=1e-4)
    assert copy.deepcopy(layer).mask_lock is not layer.mask_lock


# ---------------------------------------------------------------------------------------------
# 4. malformed indices at the public entries
# ---------------------------------------------------------------------------------------------

_MALFORMED_SCRIPT = r"""
import torch
from lottery_fast.nn.conv import sparse_conv2d
from lottery_fast.nn.sparse_index import SparseIndex
torch.manual_seed(0)
mask = torch.rand(4, 3, 3, 3) < 0.5
good = SparseIndex.from_mask(mask)
rp, ci, cp, ri = good.row_ptr, good.col_idx, good.col_ptr, good.row_idx

def hand(**kw):
    parts = dict(rows=4, cols=27, nnz=good.nnz, row_ptr=rp.clone(), col_idx=ci.clone(), col_ptr=cp.clone(),
                 row_idx=ri.clone())
    parts.update(kw)
    return SparseIndex(**parts)

def big_col():
    c = ci.clone(); c[-1] = 10 ** 6; return hand(col_idx=c)
def big_row():
    r = ri.clone(); r[0] = 10 ** 6; return hand(row_idx=r)
def negative_col():
    c = ci.clone(); c[0] = -5; return hand(col_idx=c)
def decreasing_ptr():
    p = rp.tolist(); p[1], p[2] = p[2], p[1]; return hand(row_ptr=torch.tensor(p))
def short_ptr_end():
    p = rp.clone(); p[-1] -= 1; return hand(row_ptr=p)
def unsorted_row():
    c = ci.clone(); c[0], c[1] = c[1], c[0]; return hand(col_idx=c)
def csc_of_another_mask():
    other = SparseIndex.from_mask(torch.roll(mask, 1, 0))
    return hand(col_ptr=other.col_ptr.clone(), row_idx=other.row_idx.clone()) if other.nnz == good.nnz else None
def edited_in_place():
    idx = SparseIndex.from_mask(mask); idx.col_idx[0] = 10 ** 6; return idx

cases = {
    "col out of range": big_col,
    "row out of range (backward)": big_row,
    "negative column": negative_col,
    "int64 col_idx": lambda: hand(col_idx=ci.long()),
    "int32 row_ptr": lambda: hand(row_ptr=rp.int()),
    "int32/int64 swapped": lambda: hand(row_ptr=ci.long()[:5] if ci.numel() >= 5 else rp.int(), col_idx=rp.int()),
    "decreasing row_ptr": decreasing_ptr,
    "row_ptr not ending at nnz": short_ptr_end,
    "unsorted row": unsorted_row,
    "CSC of another mask": csc_of_another_mask,
    "nnz larger than the tensors": lambda: hand(nnz=good.nnz + 100),
    "non-contiguous col_idx": lambda: hand(col_idx=torch.stack([ci, ci], 1)[:, 0]),
    "missing CSC": lambda: hand(col_ptr=None),
    "trusted index edited in place": edited_in_place,
    "not an index": lambda: (rp, ci, cp, ri),
}
x = torch.randn(2, 3, 6, 6, requires_grad=True)
w = torch.randn(4, 3, 3, 3, requires_grad=True)
for name, make in cases.items():
    index = make()
    if index is None:
        print("skip", name); continue
    try:
        out = sparse_conv2d(x, w, None, index, padding=1)
        out.sum().backward()
    except (ValueError, TypeError) as e:
        print("rejected", name, "|", str(e).replace("\n", " ")[:200])
    else:
        print("ACCEPTED", name)
# a correct hand-made index is accepted and gives the from_mask result
out = sparse_conv2d(x, w, None, hand(), padding=1)
assert torch.equal(out, sparse_conv2d(x, w, None, good, padding=1))
print("done")
"""


@pytest.mark.slow
def test_malformed_index_raises_instead_of_crashing():
    run = _run_script(_MALFORMED_SCRIPT, env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, f"exit code {run.returncode} (a negative one is a signal)\n{run.stdout}{run.stderr[-3000:]}"
    lines = run.stdout.splitlines()
    assert lines[-1] == "done"
    assert not [line for line in lines if line.startswith("ACCEPTED")], run.stdout
    assert sum(line.startswith("rejected") for line in lines) >= 14, run.stdout
    for case, message in [("int64 col_idx", "col_idx must be torch.int32, got torch.int64"),
                          ("decreasing row_ptr", "row_ptr must not decrease"),
                          ("trusted index edited in place", "col_idx holds 1000000, outside [0, 27)"),
                          ("CSC of another mask", "the CSC (col_ptr, row_idx) does not hold the same entries")]:
        assert f"rejected {case} | sparse_conv2d: index (SparseIndex): {message}" in run.stdout, run.stdout


def test_index_of_from_mask_skips_the_full_scan(monkeypatch):
    index = SparseIndex.from_mask(torch.rand(4, 3, 3, 3) < 0.5)
    calls = []
    monkeypatch.setattr(SparseIndex, "_full_check", lambda self, name: calls.append(name))
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    sparse_conv2d(x, w, None, index)
    assert calls == []
    hand = SparseIndex(index.rows, index.cols, index.nnz, index.row_ptr, index.col_idx, index.col_ptr,
                       index.row_idx)
    sparse_conv2d(x, w, None, hand)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# 10. pruning in one thread while another runs the layer
# ---------------------------------------------------------------------------------------------

def _model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 300),
                        nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 4))
    return masked(net)


@pytest.mark.parametrize("path", ["sparse", "dense", "auto"])
def test_pruning_while_another_thread_runs_the_model(path):
    model = _model()
    for layer in (model[0], model[3], model[5], model[7]):
        layer.path = path
    x = torch.randn(16, 3, 8, 8)
    errors, steps, stop = [], [0], threading.Event()

    def train():
        while not stop.is_set():
            try:
                model(x).square().mean().backward()
                with torch.no_grad():
                    model(x)
                steps[0] += 1
            except Exception as e:  # noqa: BLE001 - any error fails the test below
                errors.append(repr(e))
                return

    def worker_steps_on(timeout=30.0):  # so that pruning overlaps training on a loaded machine too
        start, deadline = steps[0], time.monotonic() + timeout
        while steps[0] == start and not errors and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)

    worker = threading.Thread(target=train)
    worker.start()
    try:
        for i in range(30):
            if i % 5 == 0:
                worker_steps_on()
            prune_model(model, PruneConfig(rate=0.15))
            if i % 10 == 9:
                model[5].set_mask(torch.rand(300, 300) < 0.9)
                model[3].mask = torch.rand(300, 512) < 0.5
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors[0]
    assert steps[0] > 0
    model(x)  # an assigned mask zeroes its pruned weights at the next forward
    for layer in (model[3], model[5], model[7]):
        assert torch.all(layer.weight[~layer.mask] == 0)


# ---------------------------------------------------------------------------------------------
# 11. memory: the path from the density, and what an index costs
# ---------------------------------------------------------------------------------------------

def test_auto_path_on_an_unpruned_layer_builds_no_index():
    layer = MaskedLinear(512, 512)  # auto
    conv = MaskedConv2d(16, 16, 3)
    layer(torch.randn(4, 512))
    conv(torch.randn(2, 16, 8, 8))
    assert not layer.uses_sparse_path(torch.randn(4, 512))
    assert layer._index_cache._index is None and conv._index_cache._index is None


def test_index_bytes_track_the_kept_weights():
    torch.manual_seed(0)
    layer = MaskedLinear(300, 200, path="sparse")
    layer.set_mask(torch.rand(200, 300) < 0.5)
    nnz = int(layer.mask.sum())
    kept_bytes = nnz * layer.weight.element_size()
    x = torch.randn(4, 300)
    layer(x).sum().backward()  # x needs no gradient: a first layer's backward needs no CSC
    index = layer.sparse_index()
    assert index.nbytes == 4 * nnz + 8 * 201 <= 1.5 * kept_bytes
    layer(x.requires_grad_()).sum().backward()  # the input gradient walks the CSC
    assert index.nbytes == 8 * nnz + 8 * (201 + 301)
    assert layer.sparse_index() is index


def test_index_builders_agree_with_nonzero(monkeypatch):
    """The in-place CPU builders and the chunked one of other devices (run here on CPU tensors,
    in many chunks) against torch's nonzero()."""
    from lottery_fast.nn import sparse_index as si

    gen = torch.Generator().manual_seed(0)
    for shape, density in [((37, 53), 0.3), ((5, 3, 3, 3), 0.5), ((1, 1), 1.0), ((8, 9), 0.0), ((0, 4), 0.5)]:
        mask = torch.rand(shape, generator=gen) < density
        m = mask.reshape(shape[0], int(torch.Size(shape[1:]).numel()))
        index = SparseIndex.from_mask(mask)
        r, c = m.nonzero(as_tuple=True)
        tc, tr = m.t().nonzero(as_tuple=True)
        assert index.nnz == r.numel()
        assert torch.equal(index.col_idx, c.int()) and torch.equal(index.row_idx, tr.int())
        assert torch.equal(index.row_ptr.diff(), torch.bincount(r, minlength=m.shape[0]))
        assert torch.equal(index.col_ptr.diff(), torch.bincount(tc, minlength=m.shape[1]))
        monkeypatch.setattr(si, "_CHUNK_ELEMENTS", 7)
        for part, (ptr, idx) in (("csr", si._compressed_in_chunks(m)), ("csc", si._compressed_in_chunks(m.t()))):
            want_ptr, want_idx = (index.row_ptr, index.col_idx) if part == "csr" else (index.col_ptr, index.row_idx)
            assert torch.equal(ptr, want_ptr) and torch.equal(idx, want_idx), (shape, part)
        monkeypatch.undo()


def test_mask_written_during_the_build_is_an_error_not_a_torn_index(monkeypatch):
    from lottery_fast.nn import sparse_index as si

    mask = torch.ones(6, 5, dtype=torch.bool)
    counts = _core.sparse_index_row_counts

    class WritingCore:  # the core with another "thread" pruning between the two passes
        def __getattr__(self, name):
            return getattr(_core, name)

        @staticmethod
        def sparse_index_row_counts(*args):
            n = counts(*args)
            mask[2, 1] = False
            return n

    monkeypatch.setattr(si, "_core", WritingCore())
    with pytest.raises(RuntimeError, match="mask changed while its index was built"):
        SparseIndex.from_mask(mask)


_MEMORY_SCRIPT = r"""
import json, torch
from lottery_fast.nn import MaskedLinear
from lottery_fast.nn.sparse_index import SparseIndex
torch.set_num_threads(1)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def peak_of(f):
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak to the current resident size
    before = status("VmRSS:")
    out = f()
    return status("VmHWM:") - before, out

n = 4096
mask = torch.ones(n, n, dtype=torch.bool)
mask[::7] = False
build_peak, index = peak_of(lambda: SparseIndex.from_mask(mask))
layer = MaskedLinear(n, n)  # unpruned, path "auto"
x = torch.randn(4, n)
forward_peak, _ = peak_of(lambda: layer(x))
print(json.dumps(dict(build_peak=build_peak, index_bytes=index.nbytes, nnz=index.nnz, forward_peak=forward_peak)))
"""


@pytest.mark.slow
def test_index_build_and_dense_forward_peak_memory():
    """Measured peak resident memory (the kernels' allocations are invisible to tracemalloc)."""
    if not pathlib.Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak memory")
    run = _run_script(_MEMORY_SCRIPT, env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads(run.stdout.splitlines()[-1])
    mib = 1 << 20
    # the index (CSR only: 4 bytes per kept weight, as much as the float32 weights it indexes)...
    assert m["index_bytes"] == 4 * m["nnz"] + 8 * (4096 + 1)
    # ...is all a build costs (torch's nonzero() would take 16 bytes per kept weight first)
    assert m["build_peak"] <= m["index_bytes"] + 8 * mib, m
    # an unpruned layer on "auto" goes dense from the mask count: no index at all (an index of this
    # mask would be 55 MiB). The first forward also pays one-off lazy set-up, measured at 5.6 to
    # 10.4 MiB across fresh installs of the same tree, hence the bound.
    assert m["forward_peak"] <= 16 * mib, m


# ---------------------------------------------------------------------------------------------
# 12. int32 indices and the forced narrower ISAs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 2**31), (2**31, 1), (1, 2**16, 2**15)])
def test_from_mask_refuses_masks_past_int32(shape):
    # meta tensors: the shape is checked before anything is allocated or read
    with pytest.raises(ValueError, match="int32"):
        SparseIndex.from_mask(torch.empty(shape, dtype=torch.bool, device="meta"))


_FORCED_ISA_SCRIPT = r"""
import itertools, torch
from lottery_fast import _core
import test_masked_conv as conv
import test_threshold as thr
want = {want!r}
assert _core.isa() in want and _core.masked_linear_isa() == _core.isa(), _core.isa()
for geometry, dtype, algo in itertools.product(conv.GEOMETRIES, (torch.float32, torch.float64),
                                               ("direct", "blocked", "flat")):
    conv.test_matches_reference(geometry, dtype, algo)
conv.test_layer_sparse_and_dense_paths_agree(1)
for dtypes in ((torch.float32,), (torch.float64,), (torch.float32, torch.float64)):
    for seed in range(10):
        thr.test_matches_sort_reference(seed, dtypes)
for dtype in (torch.float32, torch.float64):
    thr.test_large_ties_thread_count_independent(dtype)
thr.test_large_continuous_threads()
print(_core.isa())
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_isa_conv_and_threshold_kernels(isa):
    """The AVX2 and baseline stamps of the conv and threshold kernels against their float64 and
    sort references, forced through LOTTERY_FAST_ISA in a subprocess (the linear ones:
    test_masked_linear.test_narrower_isa_kernels)."""
    want = ("avx2", "baseline") if isa == "avx2" else ("baseline",)
    run = _run_script(_FORCED_ISA_SCRIPT.format(want=want), env={"LOTTERY_FAST_ISA": isa})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-1] in want
