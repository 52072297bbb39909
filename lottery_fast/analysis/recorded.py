"""The experiment a run folder recorded in its config.json, for commands that only read a run.

The run folder's own errors advise starting the run over, which is right for a run about to train
but would throw finished work away when all one wanted was a figure: here a missing or unreadable
config.json is reported as what it is, with advice that leaves the run as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from ..imp import CorruptCheckpointError, RunFolder


def recorded_experiment(run_dir: Union[str, Path], needed_for: str) -> Dict[str, Any]:
    """config.json's experiment (resolved IMP config and trainer) of ``run_dir``; ``needed_for``
    says in the error what wanted it."""
    folder = RunFolder(Path(run_dir))
    path = folder.config_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {needed_for} needs the experiment it records (trainer, env, settings). "
            f"Put it back if it was moved; results.csv and the checkpoints are left as they are")
    try:
        return folder.read_experiment()
    except CorruptCheckpointError as e:
        cause = e.__context__ or e  # the run folder's error is raised from None; the cause is kept here
        raise ValueError(
            f"{path} cannot be read ({type(cause).__name__}: {cause}): {needed_for} needs the experiment it "
            f"records. Restore it from a copy; results.csv and the checkpoints are left as they are") from None
