"""The actor-critics of a population stacked into one network with a leading member axis.

:class:`PopulationActorCritic` is built from the members' :class:`ActorCritic` models (weights,
masks, ``log_std``) and written back into them when training ends; every tensor it takes or
returns is ``[P, batch, ...]``. Observation statistics stay in each member's own ``obs_norm``.
Vector observations only: image models (conv torsos) train one by one.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..nn import MaskedLinear
from ..nn.population import PopulationLinear
from .common import snapshot
from .networks import ActorCritic, _Net, log_prob_entropy, sample_action


def stackable(models: Sequence[nn.Module]) -> bool:
    """Whether :class:`PopulationActorCritic` can stack these models (vector-input actor-critics
    of one architecture)."""
    if not models or not all(isinstance(m, ActorCritic) and not m.image for m in models):
        return False
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
    return len(shapes) == 1 and len({m.discrete for m in models}) == 1


class PopulationMLP(nn.Module):
    """One of actor or critic for every member: the body's hidden layers and the head."""

    def __init__(self, nets: Sequence[_Net]) -> None:
        super().__init__()
        if any(n.encoder is not None for n in nets):
            raise ValueError("PopulationMLP: conv encoders are not stacked; train image models one by one")
        per_member = [[m for m in n.body if isinstance(m, MaskedLinear)] + [n.head] for n in nets]
        self.layers = nn.ModuleList(PopulationLinear.from_layers([layers[i] for layers in per_member])
                                    for i in range(len(per_member[0])))
        acts = [type(m) for m in nets[0].body if not isinstance(m, MaskedLinear)]
        self.acts = nn.ModuleList(a() for a in acts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.layers[-1](x)

    def write_to(self, net: _Net, member: int) -> None:
        targets = [m for m in net.body if isinstance(m, MaskedLinear)] + [net.head]
        for layer, target in zip(self.layers, targets):
            layer.write_to(target, member)


class PopulationActorCritic(nn.Module):
    """Stacked actor and critic of ``len(models)`` members (see the module docstring)."""

    def __init__(self, models: Sequence[ActorCritic]) -> None:
        super().__init__()
        if not stackable(models):
            raise ValueError("PopulationActorCritic: members must be vector-input ActorCritics of one architecture")
        self.members: List[ActorCritic] = list(models)
        self.discrete = models[0].discrete
        self.actor = PopulationMLP([m.actor for m in models])
        self.critic = PopulationMLP([m.critic for m in models])
        self.log_std = None if self.discrete else nn.Parameter(
            torch.stack([m.actor.log_std.detach() for m in models]))

    @property
    def size(self) -> int:
        return len(self.members)

    def actor_parameters(self) -> List[nn.Parameter]:
        params = list(self.actor.parameters())
        return params + ([] if self.log_std is None else [self.log_std])

    # -- observations: each member normalises with its own statistics ------------------------
    def preprocess(self, obs: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        if self.members[0].obs_norm is None:
            return obs.to(torch.float32)
        return torch.stack([m.preprocess(o, update_stats=update_stats) for m, o in zip(self.members, obs)])

    # -- policy and value ----------------------------------------------------------------
    def _log_std(self) -> Optional[torch.Tensor]:
        return None if self.log_std is None else self.log_std.unsqueeze(1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    def sample(self, x: torch.Tensor, noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return sample_action(self.actor(x), self._log_std(), noise)

    def log_prob_entropy(self, x: torch.Tensor, action: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return log_prob_entropy(self.actor(x), self._log_std(), action)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.actor(self.preprocess(obs))
        return out.argmax(-1) if self.discrete else out

    # -- back into the members -----------------------------------------------------------
    @torch.no_grad()
    def write_member(self, member: int) -> ActorCritic:
        """Copy member ``member``'s trained weights into its model; returns the model."""
        model = self.members[member]
        self.actor.write_to(model.actor, member)
        self.critic.write_to(model.critic, member)
        if self.log_std is not None:
            model.actor.log_std.copy_(self.log_std[member])
        return model

    def member_state(self, member: int) -> Dict[str, torch.Tensor]:
        """A copy of member ``member``'s ``state_dict`` as it is now (for late rewinding)."""
        return snapshot(self.write_member(member))
