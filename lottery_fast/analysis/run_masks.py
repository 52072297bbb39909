"""The input-layer mask of a finished IMP run folder: tables, figures and a text summary.

Reads the run's ``config.json`` (which trainer, env id, the observation names recorded when the run
started) and the ticket masks it saved, so it needs no trainer and no env. Folders written before the
names were recorded fall back to the env's known dim names and the run's distractors. The input layer is the first prunable layer (the first saved
mask: ``actor.body.0`` for PPO/BC, ``fc1`` for digits) unless one is named.

* Vector inputs (a Linear on the observation): per input dim, the share of the layer's units still
  connected, named after the env's dims and its distractors (``PPOConfig.distractors``).
* Image inputs (a Conv2d, or the digits MLP on 8x8 pixels): per channel and per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..imp import TICKET, RunFolder, load_mask_history
from .input_mask import (ImageInputSurvival, InputDimSurvival, image_input_survival, input_dim_survival,
                         plot_image_survival, plot_input_dim_survival, write_table)
from .recorded import recorded_experiment

PathLike = Union[str, Path]


def _image_shape(trainer: str) -> Optional[Tuple[int, int, int]]:
    """The flattened-image input shape of a registered trainer (the digits MLP: 1x8x8), else None."""
    from ..train.registry import trainer_names, trainer_spec

    return trainer_spec(trainer).image_shape if trainer in trainer_names() else None


@dataclass(frozen=True)
class RunInputs:
    """What a run's config says about its inputs."""

    trainer: str
    env_id: Optional[str]  # None for supervised runs and runs written before env ids were recorded
    distractors: Tuple[str, ...]
    #: the observation names config.json recorded (None: an older folder, or another env asked for)
    obs_names: Optional[Tuple[str, ...]] = None

    def dim_names(self, width: int) -> List[str]:
        """Names of the ``width`` input dims: the recorded ones, else the env's own (or 'dim i') then
        the distractors'."""
        if self.obs_names is not None and len(self.obs_names) == width:
            return list(self.obs_names)
        from ..envs.distractors import distractor_names
        from ..envs.make import base_obs_names

        base = width - len(self.distractors)
        if base < 1:
            raise ValueError(f"the input layer has {width} inputs, fewer than the run's "
                             f"{len(self.distractors)} distractors plus one observation dim")
        names = base_obs_names(self.env_id, base)
        return list(names) + distractor_names(self.distractors, names)


def run_inputs(experiment: Mapping[str, Any], env_id: Optional[str] = None,
               recorded: Optional[Mapping[str, Any]] = None) -> RunInputs:
    """:class:`RunInputs` of an experiment as stored in config.json, with the input names it
    ``recorded`` (``RunFolder.read_inputs()``); ``env_id`` overrides the stored one (and its names)."""
    trainer = experiment.get("trainer", {})
    cfg = trainer.get("config") or {}
    stored_env = trainer.get("env_id") or cfg.get("env_id")
    ppo_cfg = cfg.get("expert") if trainer.get("name") == "bc" else cfg
    distractors = tuple((ppo_cfg or {}).get("distractors") or ())
    names = (recorded or {}).get("obs_names") if env_id in (None, stored_env) else None
    return RunInputs(str(trainer.get("name", "?")), env_id or stored_env, distractors,
                     None if names is None else tuple(names))


@dataclass(frozen=True)
class MaskReport:
    """What :func:`input_mask_report` measured and wrote for one run folder."""

    run_dir: Path
    seed: int
    layer: str
    inputs: RunInputs
    survival: Union[InputDimSurvival, ImageInputSurvival]
    files: List[Path]

    def summary(self) -> str:
        """Per input dim (or channel): kept share at the last iteration and when it was fully pruned."""
        s = self.survival
        last = len(s.iterations) - 1
        if isinstance(s, InputDimSurvival):
            names, frac, unit = s.dim_names, s.fraction[last], "input dim"
        else:
            names, frac, unit = s.channel_names, s.channel_fraction[last], "channel"
        width = max(len(n) for n in [unit, *names])
        kept = f"kept at iter {s.iterations[-1]}"
        lines = [f"{self.run_dir} (seed {self.seed}, {self.inputs.env_id or self.inputs.trainer}): "
                 f"layer {self.layer}, iterations {s.iterations[0]}..{s.iterations[-1]}, "
                 f"{100 * s.remaining[last]:.3g}% of prunable weights left at the last",
                 f"  {unit:<{width}}  {kept}  fully pruned at"]
        for j, name in enumerate(names):
            gone = s.fully_pruned_at[j]
            share = f"{100 * frac[j]:.1f}%"
            lines.append(f"  {name:<{width}}  {share:>{len(kept)}}  {'-' if gone is None else f'iter {gone}'}")
        if isinstance(s, ImageInputSurvival):
            pixels = s.pixel_fraction[last]
            what = "kernel positions" if s.kind == "conv" else "pixels"
            lines.append(f"  {int((pixels == 0).sum())} of {pixels.size} {what} fully pruned at iter {s.iterations[-1]}")
        return "\n".join(lines)


def input_layer(history: Mapping[int, Mapping[str, Any]], layer: Optional[str] = None) -> str:
    """``layer`` checked against the saved masks, or the first prunable layer."""
    first = history[min(history)]
    if layer is None:
        return next(iter(first))
    if layer not in first:
        raise ValueError(f"no mask for layer {layer!r}; prunable layers are {list(first)}")
    return layer


def input_mask_report(run_dir: PathLike, out_dir: Optional[PathLike] = None, seed: Optional[int] = None,
                      layer: Optional[str] = None, env_id: Optional[str] = None,
                      condition: str = TICKET) -> MaskReport:
    """Measure the input layer's ticket masks of ``run_dir`` and write a CSV table and a PNG figure.

    Files go to ``out_dir`` (default ``run_dir``): ``input_dims_seed<S>.{csv,png}`` for vector
    inputs, ``input_channels_seed<S>.csv`` and ``input_pixels_seed<S>.png`` for images (plus the
    per-round pixel panels of :func:`lottery_fast.analysis.mask_images.plot_input_masks` for digits).
    """
    run_dir = Path(run_dir)
    experiment = recorded_experiment(run_dir, "the input-mask report")
    seed = int(experiment["imp"]["seeds"][0]) if seed is None else int(seed)
    history = load_mask_history(run_dir, seed, condition)
    layer = input_layer(history, layer)
    inputs = run_inputs(experiment, env_id, RunFolder(run_dir).read_inputs())
    out = Path(out_dir) if out_dir is not None else run_dir
    mask = history[min(history)][layer]
    files: List[Path] = []
    survival: Union[InputDimSurvival, ImageInputSurvival]
    flat_image = _image_shape(inputs.trainer)  # a trainer whose input is a flattened image (digits)
    image_shape = flat_image or _env_image_shape(experiment, inputs, int(mask.shape[-1]))
    if mask.dim() == 2 and image_shape is None:
        survival = input_dim_survival(history, layer, inputs.dim_names(int(mask.shape[1])))
        title = f"{inputs.env_id or inputs.trainer}: kept {layer} weights per input dim (seed {seed})"
        files.append(write_table(survival.rows(), out / f"input_dims_seed{seed}.csv"))
        files.append(plot_input_dim_survival(survival, out / f"input_dims_seed{seed}.png", title=title))
    else:
        names = _env_channel_names(experiment, inputs) if flat_image is None else None
        survival = image_input_survival(history, layer, image_shape, names)
        files.append(write_table(survival.rows(), out / f"input_channels_seed{seed}.csv"))
        files.append(plot_image_survival(survival, out / f"input_pixels_seed{seed}.png"))
        if flat_image is not None and image_shape[0] == 1:
            from .mask_images import plot_input_masks

            files.append(plot_input_masks(run_dir, out / f"input_masks_seed{seed}.png", seed, layer,
                                          image_shape[1:]))
    return MaskReport(run_dir, seed, layer, inputs, survival, files)


def _own_env(experiment: Mapping[str, Any], inputs: RunInputs):
    """The run's env when it is one of lottery_fast's own image envs (gridworld, MinAtar), else None."""
    if not (inputs.env_id or "").startswith("lottery_fast/"):
        return None
    import gymnasium as gym

    from ..envs import registry  # noqa: F401  (registers the ids)

    cfg = experiment.get("trainer", {}).get("config") or {}
    return gym.make(inputs.env_id, **dict(cfg.get("env_kwargs") or {}))


def _env_image_shape(experiment: Mapping[str, Any], inputs: RunInputs, width: int) -> Optional[Tuple[int, int, int]]:
    """``(C, H, W)`` of an image env whose flattened frame is the input layer's ``width`` inputs (an MLP
    torso, ``NetworkConfig.image_torso='mlp'``), or of a conv's frame; None for vector inputs."""
    env = _own_env(experiment, inputs)
    if env is None:
        return None
    try:
        shape = tuple(int(v) for v in env.observation_space.shape)
    finally:
        env.close()
    return shape if len(shape) == 3 else None  # type: ignore[return-value]


def _env_channel_names(experiment: Mapping[str, Any], inputs: RunInputs) -> Optional[List[str]]:
    env = _own_env(experiment, inputs)
    if env is None:
        return None
    try:
        return list(env.unwrapped.channel_names)
    finally:
        env.close()


def layer_init_rms(run_dir: PathLike, seed: int) -> Dict[str, float]:
    """RMS of each prunable layer's weights in the run's rewind point (the init IMP trains from, after
    any init rescaling), keyed by layer name in the order of the saved masks."""
    folder = RunFolder(Path(run_dir))
    state, _ = folder.load_rewind(int(seed))
    layers = load_mask_history(run_dir, int(seed))
    return {name: float(state[f"{name}.weight"].double().pow(2).mean().sqrt()) for name in layers[min(layers)]}
