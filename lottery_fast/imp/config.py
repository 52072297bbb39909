"""IMPConfig: what one IMP experiment is, resolved against a trainer and written to config.json."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..prune import CONDITIONS, RESCALE_MODES, PruneConfig, condition_names
from ..prune.magnitude import name_matches

TICKET = "mask/weights"
RANDOM_POOLS = ("groups", "all")
#: IMPConfig.packed: train every round's masked layers packed, none, or those sparse enough to win
PACKED_MODES = ("off", "on", "auto")


def _default_prune() -> PruneConfig:
    return PruneConfig(rate=0.2, scope="global")


@dataclass(frozen=True)
class IMPConfig:
    """One IMP experiment: ``iterations`` pruning rounds after the dense round 0, per run seed.

    ``exclude``: fnmatch patterns of modules never pruned; ``None`` takes the trainer's
    ``default_prune_exclude`` (the PPO critic, say). It replaces ``prune.exclude`` when resolved,
    so pass ``exclude=()`` to prune every masked layer of a trainer that excludes some by default.
    ``rewind_step``: ``None`` rewinds to the initial weights, ``k`` to the weights after ``k``
    optimizer steps of the dense round (late rewinding).
    ``conditions``: which of the four ticket conditions to train at every pruned iteration; the
    ticket (``mask/weights``) is the IMP line itself and must be among them. Round 0 trains only
    the dense ticket: at density 1 the conditions differ only in their initial values.
    ``rescale``/``rescale_reference``: initialisation rescaling of the prunable layers
    (:func:`lottery_fast.prune.rescale_init_`: ``"none"``, ``"fan_in"`` or ``"rms"``), applied to
    every freshly built model (the run's init and ``random/reinit``'s fresh init) before training.
    ``output_rate_factor``: a trainer's ``output_layers`` (e.g. the PPO actor head) are pruned
    layer-wise at ``factor * prune.rate`` instead of competing in the global ranking (as Frankle &
    Carbin prune output layers at half rate). Why: CleanRL's actor head starts at gain 0.01, so a
    global magnitude cut removes the whole head within a round or two and the policy goes constant.
    ``None`` (or a layer already named in ``prune.layer_rates``) leaves the layer in the global ranking.
    ``random_pool``: where ``random/reinit`` draws its random mask. ``"groups"`` (the default): within
    each pruning group (:func:`lottery_fast.prune.prune_groups`), so a layer pruned at its own rate,
    such as the protected actor head, keeps the same kept count as under IMP and only the globally
    ranked layers are pooled; ``"all"``: over all prunable layers together (the rule of runs made
    before this option existed), which can leave the head with a handful of weights.
    ``save_final_weights``: also keep the trained weights of the derived conditions (the ticket's
    are always kept, the next mask is computed from them).
    ``packed``: train each unit with its masked layers packed (:func:`lottery_fast.nn.packed`: the
    optimizer steps only the kept weights): ``"on"`` every masked layer, ``"auto"`` those at least
    :data:`lottery_fast.nn.packed.PACK_MIN_SPARSITY` sparse, ``"off"`` none. Masks, pruning,
    rewinding and the conditions are unchanged and results agree with ``"off"`` within float
    tolerance, so it is how units train, not what the experiment is: it is left out of
    config.json and a run may resume with another setting. Units train one at a time with it
    (``run_imp(population=False)``, or a trainer without ``train_population``).
    """

    iterations: int = 20
    prune: PruneConfig = field(default_factory=_default_prune)
    rewind_step: Optional[int] = None
    conditions: Tuple[str, ...] = CONDITIONS
    seeds: Tuple[int, ...] = (0,)
    exclude: Optional[Tuple[str, ...]] = None
    rescale: str = "none"
    rescale_reference: Optional[float] = None
    output_rate_factor: Optional[float] = 0.5
    save_final_weights: bool = False
    random_pool: str = "groups"
    packed: str = "off"

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"IMPConfig.iterations must be an int >= 0, got {self.iterations!r}")
        if self.rewind_step is not None and (
            isinstance(self.rewind_step, bool) or not isinstance(self.rewind_step, int) or self.rewind_step < 0
        ):
            raise ValueError(f"IMPConfig.rewind_step must be None or an int >= 0, got {self.rewind_step!r}")
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ValueError(f"IMPConfig.seeds must be a non-empty tuple of ints >= 0, got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"IMPConfig.seeds has duplicates: {self.seeds!r}")
        conditions = tuple(self.conditions)
        registered = condition_names()
        unknown = [c for c in conditions if c not in registered]
        if unknown:
            raise ValueError(f"IMPConfig.conditions: unknown {unknown}; choose from {list(registered)} "
                             f"(lottery_fast.prune.register_condition adds more)")
        if len(set(conditions)) != len(conditions):
            raise ValueError(f"IMPConfig.conditions has duplicates: {self.conditions!r}")
        if TICKET not in conditions:
            raise ValueError(f"IMPConfig.conditions must include {TICKET!r} (the IMP line), got {self.conditions!r}")
        if self.rescale not in RESCALE_MODES:
            raise ValueError(f"IMPConfig.rescale must be one of {list(RESCALE_MODES)}, got {self.rescale!r}")
        if self.output_rate_factor is not None and not 0.0 <= self.output_rate_factor <= 1.0:
            raise ValueError(f"IMPConfig.output_rate_factor must be None or in [0, 1], got {self.output_rate_factor!r}")
        if self.random_pool not in RANDOM_POOLS:
            raise ValueError(f"IMPConfig.random_pool must be one of {list(RANDOM_POOLS)}, got {self.random_pool!r}")
        if self.packed not in PACKED_MODES:
            raise ValueError(f"IMPConfig.packed must be one of {list(PACKED_MODES)}, got {self.packed!r}")
        if not isinstance(self.prune, PruneConfig):
            raise TypeError(f"IMPConfig.prune must be a PruneConfig, got {type(self.prune).__name__}")
        # canonical order: the ticket first, so that the next round's mask exists before anything else
        object.__setattr__(self, "conditions", tuple(c for c in registered if c in conditions))
        object.__setattr__(self, "seeds", seeds)
        if self.exclude is not None:
            object.__setattr__(self, "exclude", tuple(self.exclude))

    def resolved(self, default_exclude: Tuple[str, ...], output_layers: Tuple[str, ...] = ()) -> "IMPConfig":
        """This config with ``exclude`` fixed (trainer default if unset) and copied into ``prune``,
        and the trainer's output layers given their own rate (see ``output_rate_factor``)."""
        exclude = tuple(default_exclude) if self.exclude is None else tuple(self.exclude)
        layer_rates = tuple(self.prune.layer_rates)
        if self.output_rate_factor is not None:
            named = {pattern for pattern, _ in layer_rates}
            layer_rates += tuple((name, self.prune.rate * self.output_rate_factor) for name in output_layers
                                 if name not in named and not any(name_matches(name, p) for p in exclude))
        prune = dataclasses.replace(self.prune, exclude=exclude, layer_rates=layer_rates)
        return dataclasses.replace(self, exclude=exclude, prune=prune)

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["packed"]  # an execution setting (see the class docstring), not part of the experiment
        return json_safe(out)


def json_safe(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples become lists), so stored and new configs compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


def trainer_description(trainer: Any) -> Dict[str, Any]:
    """Name, class, env id (when the trainer has an ``env_id``) and (when it has a dataclass ``config``)
    hyperparameters of a trainer. The env id makes a run folder refuse to resume on another env and
    lets analysis name the input dims."""
    desc: Dict[str, Any] = {"name": trainer.name, "class": f"{type(trainer).__module__}.{type(trainer).__qualname__}"}
    env_id = getattr(trainer, "env_id", None)
    if isinstance(env_id, str):
        desc["env_id"] = env_id
    cfg = getattr(trainer, "config", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        desc["config"] = json_safe(dataclasses.asdict(cfg))
    return desc


def trainer_inputs(trainer: Any) -> Optional[Dict[str, Any]]:
    """The trainer's ``input_names()`` (observation or channel names), JSON-ready; None without one."""
    names = getattr(trainer, "input_names", None)
    if not callable(names):
        return None
    value = names()
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, (list, tuple)) for v in value.values()):
        raise TypeError(f"{type(trainer).__name__}.input_names() must return a dict of name lists, got {value!r}")
    return json_safe({k: [str(n) for n in v] for k, v in value.items()})
