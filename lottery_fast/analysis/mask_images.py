"""Input-layer masks of an IMP run as images: kept weights per input pixel, one panel per round.

Reads the ticket masks a run folder saved (no trainer needed) and measures them with
:func:`lottery_fast.analysis.input_mask.image_input_survival`. For the digits MLP the input layer
is ``fc1`` with 64 inputs, drawn as 8x8; the border pixels that are constant in the data lose
their weights first.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .._atomic import atomic_write
from ..imp import TICKET, load_mask_history
from .input_mask import ImageInputSurvival, image_input_survival


def run_input_survival(run_dir: Union[str, Path], seed: Optional[int] = None, layer: Optional[str] = None,
                       image_shape: Tuple[int, int] = (8, 8), condition: str = TICKET) -> ImageInputSurvival:
    """Per-pixel kept fraction of the input layer over the finished IMP rounds of a run folder.

    ``seed`` defaults to the run's first seed, ``layer`` to the first prunable layer (a Linear
    whose inputs are the pixels of a single-channel ``image_shape`` image).
    """
    history = load_mask_history(run_dir, seed, condition)
    if layer is None:
        layer = next(iter(history[min(history)]))
    return image_input_survival(history, layer, (1, *image_shape), channel_names=["pixels"])


def plot_input_masks(run_dir: Union[str, Path], out: Optional[Union[str, Path]] = None, seed: Optional[int] = None,
                     layer: Optional[str] = None, image_shape: Tuple[int, int] = (8, 8),
                     max_panels: int = 21) -> Path:
    """Draw the input-layer mask of every IMP round (up to ``max_panels``, evenly spaced) into one PNG.

    Each panel shows the kept fraction per pixel relative to that panel's largest (named in its
    title with the share of all prunable weights left), so sparse rounds stay readable. Written
    atomically; default path ``<run_dir>/input_masks_seed<seed>.png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    surv = run_input_survival(run_dir, seed, layer, image_shape)
    picks = _spread(len(surv.iterations), max_panels)
    cols = min(len(picks), 7)
    rows = -(-len(picks) // cols)
    fig = Figure(figsize=(1.6 * cols + 0.8, 1.9 * rows))
    FigureCanvasAgg(fig)
    image = None
    for k, i in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        frac = surv.pixel_fraction[i, 0]
        peak = float(frac.max()) or 1.0  # a shared scale would leave every sparse panel dark
        image = ax.imshow(frac / peak, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"round {surv.iterations[i]}: {100 * surv.remaining[i]:.3g}%\nmax {100 * peak:.0f}%",
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label=f"share of {surv.layer} units kept per pixel / panel max")
    if out is None:
        seed_label = seed if seed is not None else _first_seed(run_dir)
        out = Path(run_dir) / f"input_masks_seed{seed_label}.png"
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _spread(n: int, k: int) -> List[int]:
    if n <= k:
        return list(range(n))
    return sorted(set(int(round(x)) for x in np.linspace(0, n - 1, k)))


def _first_seed(run_dir: Union[str, Path]) -> int:
    from ..imp.store import RunFolder

    return int(RunFolder(Path(run_dir)).read_experiment()["imp"]["seeds"][0])
