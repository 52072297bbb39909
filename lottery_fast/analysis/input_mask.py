"""What the input layer's mask keeps: per input dim, per image channel and per pixel, over IMP.

The paper's third claim is that IMP's input-layer mask prunes whole input dimensions the task
does not need (a minimal task representation). These functions read masks only (never a live
trainer): ``history`` is the masks of successive IMP iterations, either a list (index =
iteration) or a dict iteration -> masks, each masks a dict module name -> bool tensor/array.

* Vector inputs: the first layer is a Linear with mask ``[out, in]``; input dim j survives
  through column j. :func:`input_dim_survival` gives the kept fraction of each column per
  iteration and the iteration from which each dim is fully pruned.
* Image inputs: the first layer is a Conv2d with mask ``[O, C, kh, kw]`` (per-pixel means per
  kernel position) or a Linear on a flattened ``[C, H, W]`` image (per-pixel means per image
  pixel: torch's flatten order, index c*H*W + y*W + x). :func:`image_input_survival` gives the kept
  fraction per channel and per pixel; :func:`plot_image_survival` draws them, one panel per channel.

"Kept fraction" of a column/pixel is the share of the layer's output units still connected to it.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._atomic import atomic_write

MaskSet = Mapping[str, Any]  # module name -> bool mask (torch tensor or numpy array)
MaskHistory = Union[Sequence[MaskSet], Mapping[int, MaskSet]]
PathLike = Union[str, os.PathLike]


def _as_bool(mask: Any, where: str) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all()):
            raise TypeError(f"{where}: mask must be bool (or integer 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def _history(history: MaskHistory) -> List[Tuple[int, MaskSet]]:
    if isinstance(history, Mapping):
        items = sorted((int(k), v) for k, v in history.items())
    else:
        items = list(enumerate(history))
    if not items:
        raise ValueError("no masks given: the mask history is empty")
    return items


def _layer(masks: MaskSet, layer: str, it: int) -> np.ndarray:
    if layer not in masks:
        raise KeyError(f"iteration {it}: no mask for layer {layer!r}; layers are {sorted(masks)}")
    return _as_bool(masks[layer], f"iteration {it}, layer {layer!r}")


def _remaining(masks: MaskSet, it: int) -> float:
    """Fraction of all masked weights kept in this iteration (over every layer given)."""
    kept = total = 0
    for name, m in masks.items():
        arr = _as_bool(m, f"iteration {it}, layer {name!r}")
        kept += int(arr.sum())
        total += arr.size
    return kept / total if total else 0.0


def _fully_pruned_at(fraction: np.ndarray, iterations: Sequence[int]) -> List[Optional[int]]:
    """Per column: the first iteration from which the fraction is 0 up to the last iteration."""
    zero = fraction == 0
    stays_zero = np.logical_and.accumulate(zero[::-1], axis=0)[::-1]
    return [iterations[int(np.argmax(col))] if col.any() else None for col in stays_zero.T]


@dataclass(frozen=True)
class InputDimSurvival:
    """Kept weights of each input dim (column of the first Linear's mask), per IMP iteration."""

    layer: str
    iterations: List[int]
    dim_names: List[str]
    surviving: np.ndarray  # [n_iter, n_dims] kept weights per input dim
    total: int  # weights per input dim (the layer's output units)
    remaining: np.ndarray  # [n_iter] fraction of all masked weights kept
    fully_pruned_at: List[Optional[int]]  # per dim: iteration from which it has no weights left

    @property
    def fraction(self) -> np.ndarray:
        return self.surviving / self.total if self.total else np.zeros_like(self.surviving, dtype=np.float64)

    def rows(self) -> List[Dict[str, Any]]:
        """Tidy rows: one per (iteration, input dim)."""
        frac = self.fraction
        return [
            {"layer": self.layer, "iteration": it, "remaining": float(self.remaining[i]), "dim": j,
             "dim_name": name, "surviving": int(self.surviving[i, j]), "total": self.total,
             "surviving_fraction": float(frac[i, j]),
             "fully_pruned_at": "" if self.fully_pruned_at[j] is None else self.fully_pruned_at[j]}
            for i, it in enumerate(self.iterations) for j, name in enumerate(self.dim_names)
        ]


def input_dim_survival(history: MaskHistory, layer: str,
                       dim_names: Optional[Sequence[str]] = None) -> InputDimSurvival:
    """Per-input-dim kept weights of the Linear input layer ``layer`` over IMP iterations."""
    items = _history(history)
    cols, remaining, total, width = [], [], None, None
    for it, masks in items:
        m = _layer(masks, layer, it)
        if m.ndim != 2:
            raise ValueError(f"layer {layer!r} has a {m.ndim}-D mask {m.shape}: input_dim_survival needs a "
                             "Linear's [out, in] mask (use image_input_survival for conv/image inputs)")
        if width is not None and m.shape != (total, width):
            raise ValueError(f"layer {layer!r}: mask shape {m.shape} at iteration {it} differs from {(total, width)}")
        total, width = m.shape
        cols.append(m.sum(axis=0))
        remaining.append(_remaining(masks, it))
    names = list(dim_names) if dim_names is not None else [f"dim {j}" for j in range(width)]
    if len(names) != width:
        raise ValueError(f"{len(names)} dim names for layer {layer!r} with {width} inputs")
    surviving = np.stack(cols).astype(np.int64)
    iterations = [it for it, _ in items]
    return InputDimSurvival(layer, iterations, names, surviving, int(total), np.array(remaining),
                            _fully_pruned_at(surviving, iterations))


@dataclass(frozen=True)
class ImageInputSurvival:
    """Kept weights of an image input layer per channel and per pixel (or kernel position)."""

    layer: str
    kind: str  # "linear" (pixels are image pixels) or "conv" (pixels are kernel positions)
    iterations: List[int]
    channel_names: List[str]
    channel_fraction: np.ndarray  # [n_iter, C]
    pixel_fraction: np.ndarray  # [n_iter, C, h, w]
    remaining: np.ndarray  # [n_iter] fraction of all masked weights kept
    fully_pruned_at: List[Optional[int]]  # per channel

    def rows(self) -> List[Dict[str, Any]]:
        """Tidy rows: one per (iteration, channel)."""
        return [
            {"layer": self.layer, "iteration": it, "remaining": float(self.remaining[i]), "channel": c,
             "channel_name": name, "surviving_fraction": float(self.channel_fraction[i, c]),
             "fully_pruned_at": "" if self.fully_pruned_at[c] is None else self.fully_pruned_at[c]}
            for i, it in enumerate(self.iterations) for c, name in enumerate(self.channel_names)
        ]

    def pixel_rows(self) -> List[Dict[str, Any]]:
        """Tidy rows: one per (iteration, channel, row, col)."""
        _, C, h, w = self.pixel_fraction.shape
        return [
            {"layer": self.layer, "iteration": it, "channel": c, "channel_name": self.channel_names[c],
             "row": y, "col": x, "surviving_fraction": float(self.pixel_fraction[i, c, y, x])}
            for i, it in enumerate(self.iterations) for c in range(C) for y in range(h) for x in range(w)
        ]


def image_input_survival(history: MaskHistory, layer: str, image_shape: Optional[Sequence[int]] = None,
                         channel_names: Optional[Sequence[str]] = None) -> ImageInputSurvival:
    """Per-channel and per-pixel kept weights of the image input layer ``layer`` over IMP iterations.

    ``image_shape`` ``(C, H, W)`` is required for a Linear on a flattened image (to unflatten its
    columns); for a Conv2d it is optional and only checked against the mask's channels.
    """
    items = _history(history)
    chans, pixels, remaining, kind, shape0 = [], [], [], None, None
    for it, masks in items:
        m = _layer(masks, layer, it)
        if shape0 is not None and m.shape != shape0:
            raise ValueError(f"layer {layer!r}: mask shape {m.shape} at iteration {it} differs from {shape0}")
        shape0 = m.shape
        if m.ndim == 4:
            kind = "conv"
            if image_shape is not None and int(image_shape[0]) != m.shape[1]:
                raise ValueError(f"conv layer {layer!r} has {m.shape[1]} input channels, "
                                 f"image_shape says {image_shape[0]}")
            per_pixel = m.mean(axis=0)  # [C, kh, kw]
        elif m.ndim == 2:
            kind = "linear"
            if image_shape is None or len(image_shape) != 3:
                raise ValueError(f"linear layer {layer!r} on an image needs image_shape=(C, H, W), got {image_shape}")
            c, h, w = (int(v) for v in image_shape)
            if c * h * w != m.shape[1]:
                raise ValueError(f"image_shape {tuple(image_shape)} has {c * h * w} pixels x channels but layer "
                                 f"{layer!r} has {m.shape[1]} inputs")
            per_pixel = m.reshape(m.shape[0], c, h, w).mean(axis=0) if m.shape[0] else np.zeros((c, h, w))
        else:
            raise ValueError(f"layer {layer!r}: expected a Conv2d [O, C, kh, kw] or Linear [out, in] mask, "
                             f"got {m.shape}")
        pixels.append(per_pixel)
        chans.append(per_pixel.reshape(per_pixel.shape[0], -1).mean(axis=1))
        remaining.append(_remaining(masks, it))
    channel_fraction = np.stack(chans)
    C = channel_fraction.shape[1]
    names = list(channel_names) if channel_names is not None else [f"channel {c}" for c in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} channel names for layer {layer!r} with {C} input channels")
    iterations = [it for it, _ in items]
    return ImageInputSurvival(layer, str(kind), iterations, names, channel_fraction, np.stack(pixels),
                              np.array(remaining), _fully_pruned_at(channel_fraction, iterations))


def write_table(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Write tidy rows as CSV, atomically; columns in first-seen order across all rows."""
    if not rows:
        raise ValueError(f"write_table({path}): no rows to write")
    columns: Dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def _iteration_label(it: int, remaining: float) -> str:
    return f"iteration {it}\n{100 * remaining:.3g}% weights left"


def _save(fig, path: PathLike) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def plot_image_survival(surv: ImageInputSurvival, path: PathLike, iterations: Optional[Sequence[int]] = None,
                        title: Optional[str] = None,
                        marks: Optional[Mapping[str, Sequence[Sequence[int]]]] = None) -> Path:
    """One image per channel (columns) and chosen iteration (rows; default: first and last).

    Each pixel shows the share of the layer's units still connected to it (0 white .. 1 dark).
    ``marks`` outlines cells of a channel (e.g. {"enemy": route cells}) to compare against.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    chosen = list(iterations) if iterations is not None else sorted({surv.iterations[0], surv.iterations[-1]})
    missing = sorted(set(chosen) - set(surv.iterations))
    if missing:
        raise ValueError(f"iterations {missing} are not in the mask history {surv.iterations}")
    n_rows, n_cols = len(chosen), len(surv.channel_names)
    fig = Figure(figsize=(1.9 * n_cols + 1.2, 1.9 * n_rows + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    image = None
    for r, it in enumerate(chosen):
        i = surv.iterations.index(it)
        for c, name in enumerate(surv.channel_names):
            ax = axes[r][c]
            image = ax.imshow(surv.pixel_fraction[i, c], vmin=0.0, vmax=1.0, cmap="Greys", interpolation="nearest")
            for (y, x) in (marks or {}).get(name, ()):
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="tab:red", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {100 * surv.channel_fraction[i, c]:.0f}%", fontsize=9)
            if c == 0:
                ax.set_ylabel(_iteration_label(it, surv.remaining[i]), fontsize=9)
    cbar = fig.colorbar(image, ax=axes, shrink=0.8)
    cbar.set_label("share of units connected")
    where = "kernel position" if surv.kind == "conv" else "pixel"
    fig.suptitle(title or f"{surv.layer}: kept input weights per {where}", fontsize=11)
    return _save(fig, path)


def _draw_dim_survival(ax, remaining: np.ndarray, iterations: Sequence[int], names: Sequence[str],
                       frac: np.ndarray, low: Optional[np.ndarray] = None,
                       high: Optional[np.ndarray] = None) -> None:
    """Kept fraction per input dim (columns of ``frac``) against weights remaining on ``ax``; a
    min..max band when ``low``/``high`` are given."""
    x = 100 * np.asarray(remaining)
    use_remaining = bool(np.all(x > 0))  # a log axis cannot show 0% (everything pruned)
    xs = x if use_remaining else np.array(iterations)
    for j, name in enumerate(names):
        (line,) = ax.plot(xs, frac[:, j], marker="o", ms=3, label=name)
        if low is not None and high is not None:
            ax.fill_between(xs, low[:, j], high[:, j], color=line.get_color(), alpha=0.15)
    if use_remaining:
        from matplotlib.ticker import FixedLocator, NullFormatter

        ax.set_xscale("log")
        ax.invert_xaxis()
        # plain percent labels (100, 50, 20, ...) instead of 10^k on a log axis
        nice = [v for v in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01) if xs.min() <= v <= xs.max()]
        ticks = nice if len(nice) >= 2 else sorted({float(xs.min()), float(xs.max()), *nice})
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:.3g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("weights remaining [%]")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("IMP iteration")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3, which="both")


def plot_input_dim_survival(surv: InputDimSurvival, path: PathLike, title: Optional[str] = None) -> Path:
    """Kept fraction of each input dim's weights against weights remaining (log axis, as in the paper)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    _draw_dim_survival(ax, surv.remaining, surv.iterations, surv.dim_names, surv.fraction)
    ax.set_ylabel("share of input weights kept")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"{surv.layer}: kept weights per input dim")
    return _save(fig, path)


def plot_input_dim_panels(panels: Mapping[str, Sequence[InputDimSurvival]], path: PathLike,
                          title: Optional[str] = None) -> Path:
    """One panel per label (e.g. per init rescaling mode), side by side on a shared y axis: the
    kept fraction of each input dim, mean over the runs (seeds) with a min..max band.

    The runs of a panel must share iterations and dim names; weights remaining is their mean.
    """
    from matplotlib.figure import Figure

    if not panels or any(not runs for runs in panels.values()):
        raise ValueError("plot_input_dim_panels needs at least one panel, each with at least one run")
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (label, runs) in zip(axes, panels.items()):
        first = runs[0]
        for r in runs[1:]:
            if r.iterations != first.iterations or r.dim_names != first.dim_names:
                raise ValueError(f"panel {label!r}: runs differ in iterations or input dims")
        frac = np.stack([r.fraction for r in runs])
        remaining = np.mean([r.remaining for r in runs], axis=0)
        _draw_dim_survival(ax, remaining, first.iterations, first.dim_names, frac.mean(axis=0),
                           frac.min(axis=0), frac.max(axis=0))
        ax.set_title(f"{label} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    axes[0].set_ylabel("share of input weights kept")
    axes[-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)
