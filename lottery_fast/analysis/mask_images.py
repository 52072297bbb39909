"""Input-layer masks of an IMP run as images: kept weights per input pixel, one panel per round.

Reads the ticket masks a run folder saved (no trainer needed) and measures them with
:func:`lottery_fast.analysis.input_mask.image_input_survival`. For the digits MLP the input layer
is ``fc1`` with 64 inputs, drawn as 8x8; the border pixels that are constant in the data lose
their weights first. For the patrol gridworld with the MLP torso (:func:`gridworld_cell_masks`)
the enemy channel's input weights per cell, round 0 vs the last, beside the enemy's patrol route:
a minimal representation keeps them only where the enemy can stand (the paper's Figure 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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


@dataclass(frozen=True)
class CellMasks:
    """One channel of a gridworld agent's input mask per cell (MLP torso), against the enemy's patrol route."""

    channel: str
    iterations: List[int]
    remaining: np.ndarray  # [n_iter] fraction of all prunable weights kept
    kept: np.ndarray  # [n_iter, H, W] share of the input layer's units still connected to the cell
    route: np.ndarray  # [H, W] bool: cells the enemy can stand on
    walls: np.ndarray  # [H, W] bool

    def mean_kept(self, where: str, i: int = -1) -> float:
        """Mean kept share over the ``route`` cells, the floor cells ``off route``, or the ``walls``."""
        cells = {"route": self.route, "off route": ~self.route & ~self.walls, "walls": self.walls}[where]
        return float(self.kept[i][cells].mean()) if cells.any() else float("nan")

    def rows(self) -> List[Dict[str, Any]]:
        return [{"channel": self.channel, "iteration": it, "remaining": float(self.remaining[i]),
                 **{f"kept {w}": self.mean_kept(w, i) for w in ("route", "off route", "walls")}}
                for i, it in enumerate(self.iterations)]


def gridworld_cell_masks(run_dir: Union[str, Path], seed: Optional[int] = None, channel: str = "enemy",
                         layer: Optional[str] = None, condition: str = TICKET) -> CellMasks:
    """The per-cell input mask of ``channel`` over the IMP rounds of a patrol-gridworld PPO run folder.

    Needs the MLP torso (``ppo.network.image_torso=mlp``): a conv's input weights are shared by
    every cell, so its mask has no per-cell picture. The world (route, walls, channel names) is
    rebuilt from the env id and ``env_kwargs`` in the run's config.json.
    """
    import gymnasium as gym

    from ..envs import registry  # noqa: F401  (registers the ids)
    from .recorded import recorded_experiment
    from .run_masks import input_layer

    experiment = recorded_experiment(run_dir, "the gridworld cell-mask figure")
    trainer = experiment.get("trainer", {})
    cfg = trainer.get("config") or {}
    env_id = trainer.get("env_id")
    if not env_id or "PatrolGrid" not in env_id:
        raise ValueError(f"{run_dir}: gridworld_cell_masks needs a patrol-gridworld run, this one is {env_id!r}")
    env = gym.make(env_id, **dict(cfg.get("env_kwargs") or {}))
    try:
        names = list(env.unwrapped.channel_names)
        route_cells = env.unwrapped.enemy_route
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    if channel not in names:
        raise ValueError(f"no channel {channel!r}; the run's channels are {names}")
    seed = int(experiment["imp"]["seeds"][0]) if seed is None else int(seed)
    history = load_mask_history(run_dir, seed, condition)
    layer = input_layer(history, layer)
    if history[min(history)][layer].dim() != 2:
        raise ValueError(f"{run_dir}: the input layer {layer!r} is a conv, whose weights are shared by every cell; "
                         "train with ppo.network.image_torso=mlp for a per-cell input mask")
    surv = image_input_survival(history, layer, obs.shape, names)
    c = names.index(channel)
    route = np.zeros(obs.shape[1:], bool)
    route[tuple(np.asarray(route_cells).T)] = True
    walls = obs[names.index("walls")] > 0.5
    return CellMasks(channel, surv.iterations, surv.remaining, surv.pixel_fraction[:, c], route, walls)


def plot_cell_masks(cells: CellMasks, path: Union[str, Path], iterations: Optional[Sequence[int]] = None,
                    title: Optional[str] = None) -> Path:
    """The patrol route and walls, then the channel's kept share per cell at the chosen rounds (default:
    the first and the last), the route outlined in red on each."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    chosen = list(iterations) if iterations is not None else sorted({cells.iterations[0], cells.iterations[-1]})
    missing = sorted(set(chosen) - set(cells.iterations))
    if missing:
        raise ValueError(f"iterations {missing} are not in the mask history {cells.iterations}")
    fig = Figure(figsize=(2.6 * (len(chosen) + 1) + 1.0, 3.2), layout="constrained")
    axes = fig.subplots(1, len(chosen) + 1, squeeze=False)[0]
    world = np.where(cells.walls, 0.35, 1.0)
    world[cells.route] = 0.75
    axes[0].imshow(world, cmap="Greys_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[0].set_title("patrol route (red), walls (dark)", fontsize=9)
    image = None
    for ax, it in zip(axes[1:], chosen):
        i = cells.iterations.index(it)
        image = ax.imshow(cells.kept[i], vmin=0.0, vmax=1.0, cmap="Greys", interpolation="nearest")
        ax.set_title(f"round {it} ({100 * cells.remaining[i]:.3g}% left)\nroute {100 * cells.mean_kept('route', i):.0f}%"
                     f", off route {100 * cells.mean_kept('off route', i):.0f}%", fontsize=9)
    for ax in axes:
        for y, x in np.argwhere(cells.route):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="tab:red", lw=1.2))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[1:]), shrink=0.8, label="share of units connected")
    fig.suptitle(title or f"{cells.channel} channel: kept input weights per cell", fontsize=11)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
