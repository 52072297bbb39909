"""What the report reads from finished run folders: results rows, curves, recorded configs and the
names of the input dims and channels. Nothing here trains or writes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..analysis.curves import Curve, normalised_curves, return_floor
from ..imp import TICKET, RunFolder, load_results


def rows(folder: Path) -> List[Dict[str, Any]]:
    """The typed rows of the folder's results.csv."""
    return load_results(folder)


def ticket_rows(folder: Path) -> List[Dict[str, Any]]:
    return [r for r in rows(folder) if r["condition"] == TICKET]


def curves(folder: Path, env_id: str) -> Dict[str, Curve]:
    """Normalised best-return curves per condition (normalised by the env's return floor)."""
    return {c.condition: c for c in normalised_curves(rows(folder), "best_metric", return_floor(env_id))}


def seeds(folder: Path) -> List[int]:
    """The run seeds the folder's config.json records."""
    return [int(s) for s in RunFolder(folder).read_experiment()["imp"]["seeds"]]


def trainer_config(folder: Path) -> Dict[str, Any]:
    """The trainer's resolved config as the run folder recorded it (defaults included)."""
    return RunFolder(folder).read_experiment().get("trainer", {}).get("config", {})


def train_seconds(folders: Sequence[Path]) -> float:
    """Training time the run folders recorded, summed."""
    return sum(float(r["train_seconds"]) for f in folders for r in rows(f))


def obs_names(folder: Path, env_id: str, distractors: Sequence[str]) -> List[str]:
    """The names of the run's input dims: recorded in config.json when the run started; for folders
    written before that, the env's own names (from a probe env) then the distractors'."""
    recorded = (RunFolder(folder).read_inputs() or {}).get("obs_names")
    if recorded is not None:
        return list(recorded)
    from ..envs.distractors import distractor_names
    from ..envs.make import make_vec_env

    with make_vec_env(env_id, 1, 0) as probe:
        base = list(probe.spec.obs_names or ())
    return base + distractor_names(list(distractors), base)


def frame_shape(folder: Path, env_id: str) -> Tuple[int, int, int]:
    """``(C, H, W)`` of the run's image observations (from a probe env of the recorded id and kwargs)."""
    import gymnasium as gym

    from ..envs import registry  # noqa: F401  (registers the ids)

    kwargs = dict(trainer_config(folder).get("env_kwargs") or {})
    env = gym.make(env_id, **kwargs)
    try:
        return tuple(int(v) for v in env.observation_space.shape)  # type: ignore[return-value]
    finally:
        env.close()


def channel_names(folder: Path, env_id: str) -> List[str]:
    """The names of the run's image channels: recorded in config.json when the run started; for
    folders written before that, the env's own (``channel_names`` of a gymnasium env)."""
    recorded = (RunFolder(folder).read_inputs() or {}).get("channel_names")
    if recorded is not None:
        return list(recorded)
    import gymnasium as gym

    from ..envs import registry  # noqa: F401  (registers the ids)

    env = gym.make(env_id)
    try:
        return list(env.unwrapped.channel_names)
    finally:
        env.close()
