"""Input-layer masks as images: surviving weights per input pixel, one panel per IMP round.

Reads the ticket masks a run folder saved (no trainer needed). For the digits MLP the input layer
is ``fc1`` with 64 inputs, drawn as 8x8; the border pixels that are constant in the data lose
their weights first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..imp import TICKET, load_unit
from .._atomic import atomic_write
from ..imp.store import CONFIG_FILE, RunFolder


def input_counts(mask: torch.Tensor, image_shape: Tuple[int, int] = (8, 8)) -> np.ndarray:
    """Kept weights per input of a ``[out, in]`` mask, reshaped to ``image_shape``."""
    if mask.dim() != 2:
        raise ValueError(f"input_counts: expected a [out, in] linear-layer mask, got shape {tuple(mask.shape)}")
    if mask.shape[1] != image_shape[0] * image_shape[1]:
        raise ValueError(f"input_counts: {mask.shape[1]} inputs do not fill an image of shape {image_shape}")
    return mask.sum(dim=0).to(torch.int64).numpy().reshape(image_shape)


def load_input_masks(run_dir: Union[str, Path], seed: Optional[int] = None,
                     layer: Optional[str] = None) -> Tuple[str, List[int], List[torch.Tensor]]:
    """(layer, rounds, masks) of the ticket's input layer for every finished IMP round of ``seed``.

    ``seed`` defaults to the run's first seed, ``layer`` to the first prunable layer.
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))["experiment"]["imp"]
    seed = config["seeds"][0] if seed is None else seed
    folder = RunFolder(run_dir)
    rounds, masks = [], []
    for it in range(config["iterations"] + 1):
        if not folder.unit_stem(seed, it, TICKET).with_suffix(".json").is_file():
            break
        unit_masks = load_unit(run_dir, seed, it, TICKET)["masks"]
        if layer is None:
            layer = next(iter(unit_masks))
        if layer not in unit_masks:
            raise KeyError(f"load_input_masks: layer {layer!r} is not among the saved masks {list(unit_masks)}")
        rounds.append(it)
        masks.append(unit_masks[layer])
    if not rounds:
        raise FileNotFoundError(f"load_input_masks: no finished IMP round for seed {seed} in {run_dir}")
    return layer, rounds, masks


def plot_input_masks(run_dir: Union[str, Path], out: Optional[Union[str, Path]] = None, seed: Optional[int] = None,
                     layer: Optional[str] = None, image_shape: Tuple[int, int] = (8, 8),
                     max_panels: int = 21) -> Path:
    """Draw the input-layer mask of every IMP round (up to ``max_panels``, evenly spaced) into one PNG.

    Each panel shows the kept weights per input relative to that panel's maximum (named in its
    title, beside the layer's kept percentage). Written atomically; default path
    ``<run_dir>/input_masks_seed<seed>.png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layer, rounds, masks = load_input_masks(run_dir, seed, layer)
    picks = _spread(len(rounds), max_panels)
    cols = min(len(picks), 7)
    rows = -(-len(picks) // cols)
    fig = Figure(figsize=(1.6 * cols + 0.8, 1.9 * rows))
    FigureCanvasAgg(fig)
    image = None
    for k, i in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        counts = input_counts(masks[i], image_shape)
        # each panel on its own scale: at high sparsity a shared scale would leave every panel dark
        peak = max(int(counts.max()), 1)
        image = ax.imshow(counts / peak, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"round {rounds[i]}: {100 * float(masks[i].float().mean()):.1f}%\nmax {peak}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label=f"kept weights per input of {layer} / panel max")
    out_path = Path(out) if out is not None else Path(run_dir) / f"input_masks_seed{_seed_label(run_dir, seed)}.png"
    return atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _spread(n: int, k: int) -> List[int]:
    if n <= k:
        return list(range(n))
    return sorted(set(int(round(x)) for x in np.linspace(0, n - 1, k)))


def _seed_label(run_dir: Union[str, Path], seed: Optional[int]) -> int:
    if seed is not None:
        return seed
    return json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["experiment"]["imp"]["seeds"][0]
