"""Train finished IMP units again under another trainer config (a larger budget, say).

The capacity-vs-sample-efficiency control of claim 1: a ticket that falls short of the dense
return at some density may lack the parameters (capacity) or only the training steps (sample
efficiency). :func:`retrain` takes the saved start weights and masks of chosen units of an IMP
run folder and trains them again with the given trainer, for example the same PPO with twice the
steps; if they recover, the break was one of sample efficiency.

The output folder is a small run folder of its own: ``retrain.json`` (source folder, units and
trainer), one record per finished unit (``units/<seed>_<iteration>_<condition>.json``, written
atomically, so a killed call resumes with the missing units) and ``results.csv`` in the results
schema of IMP runs. Units train as one population when the trainer can (as in IMP) with the same
training seeds as in the source run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

from .config import json_safe, trainer_description
from .engine import _record
from .results import flat_row, load_results, write_results_csv
from .seeding import derive_seed
from .store import (ConfigMismatchError, RunFolder, RunFolderError, UnitKey, atomic_write_json, condition_slug,
                    versions)

RETRAIN_FILE = "retrain.json"


def _unit_model(trainer: Any, source: RunFolder, key: UnitKey) -> Tuple[nn.Module, Dict[str, Any]]:
    """The unit's model (start weights, masks installed) and its saved masks."""
    seed, _, _ = key
    saved = source.load_unit(key)
    model = trainer.build_model(seed)
    model.load_state_dict(saved["start"])
    modules = dict(model.named_modules())
    for name, mask in saved["masks"].items():
        if name not in modules or not hasattr(modules[name], "set_mask"):
            raise RunFolderError(f"unit {key} of {source.root} masks layer {name!r}, which the trainer's model "
                                 f"has not (or not as a masked layer)")
        modules[name].set_mask(mask)
    return model, saved["masks"]


def retrain(source: Union[str, Path], trainer: Any, units: Sequence[UnitKey], out: Union[str, Path],
            population: bool = True) -> List[Dict[str, Any]]:
    """Train the ``units`` ((seed, iteration, condition), finished in the IMP run folder ``source``)
    again with ``trainer`` from their saved start weights and masks; results rows, one per unit.

    Rerunning with the same arguments resumes; another source, unit list or trainer config in the
    same ``out`` raises :class:`ConfigMismatchError` before anything is trained.
    """
    src = RunFolder(Path(source))
    keys = [(int(s), int(i), str(c)) for s, i, c in units]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"retrain: units must be a non-empty list without repeats, got {units!r}")
    for key in keys:
        marker = src.unit_stem(*key).with_suffix(".json")
        if not marker.is_file():
            raise ValueError(f"retrain: unit {key} has not finished in {src.root} ({marker} is missing)")
    folder = Path(out)
    spec = json_safe({"source": str(src.root.resolve()), "units": keys, "trainer": trainer_description(trainer)})
    with RunFolder(folder).hold(sorted({k[0] for k in keys})):
        spec_path = folder / RETRAIN_FILE
        if spec_path.is_file():
            stored = json.loads(spec_path.read_text(encoding="utf-8")).get("spec")
            if stored != spec:
                raise ConfigMismatchError(f"{spec_path} was written for other units, another source or another "
                                          f"trainer config; use another output folder")
        else:
            atomic_write_json(spec_path, {"spec": spec, "versions": versions()})
        unit_dir = folder / "units"
        unit_dir.mkdir(exist_ok=True)

        def path(key: UnitKey) -> Path:
            return unit_dir / f"{key[0]}_{key[1]}_{condition_slug(key[2])}.json"

        todo = [k for k in keys if not path(k).is_file()]
        if todo:
            built = [_unit_model(trainer, src, k) for k in todo]
            models = [m for m, _ in built]
            seeds = [derive_seed(s, c, i, "train") for s, i, c in todo]
            t0 = time.perf_counter()
            if population and callable(getattr(trainer, "train_population", None)):
                outputs = trainer.train_population(models, seeds)
            else:
                outputs = [trainer.train(m, s) for m, s in zip(models, seeds)]
            seconds = (time.perf_counter() - t0) / len(todo)
            for key, (model, saved), (result, _) in zip(todo, built, outputs):
                layers = dict(model.named_modules())
                kept = sum(int(m.sum()) for m in saved.values())
                total = sum(m.numel() for m in saved.values())
                for name, mask in saved.items():  # the trainer must not have changed the masks
                    if not bool((layers[name].mask.cpu() == mask).all()):
                        raise RuntimeError(f"trainer changed the mask of layer {name!r} while retraining {key}")
                record = _record(key, kept / total, {n: int(m.sum()) / m.numel() for n, m in saved.items()},
                                 result, seconds)
                atomic_write_json(path(key), {"record": record})
        records = [json.loads(path(k).read_text(encoding="utf-8"))["record"] for k in keys]
        write_results_csv(folder / "results.csv", [flat_row(r) for r in records])
    return load_results(folder)


def load_retrain(out: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The spec (source, units, trainer) a retrain folder was made for, or None when there is none."""
    spec_path = Path(out) / RETRAIN_FILE
    if not spec_path.is_file():
        return None
    return json.loads(spec_path.read_text(encoding="utf-8"))["spec"]
