"""Adam and gradient-norm clipping for stacked parameters, member by member.

Every parameter has a leading member axis ``[P, ...]``. Each member has its own Adam state and
step count, and only the members marked active move (PPO's target-KL stop freezes a member for
the rest of an update while the others go on; Adam's momentum would otherwise keep moving it).
All arithmetic is elementwise or reduces within a member, so a member's trajectory does not
depend on the others.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch


def _per_member(t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` [P] shaped to broadcast against ``t`` [P, ...]."""
    return values.reshape(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def clip_grad_norm_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` applied to each member separately; returns the [P] norms."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    P = grads[0].shape[0]
    norms = torch.stack([g.reshape(P, -1).norm(dim=1) for g in grads], dim=1)  # [P, n_params]
    total = norms.norm(dim=1)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(_per_member(g, scale.to(g.dtype)))
    return total


class PopulationAdam:
    """Adam (torch's update rule: bias-corrected moments, ``eps`` outside the square root) with
    per-member state. ``step(active)`` moves only the members where ``active`` is True."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params: List[torch.Tensor] = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("PopulationAdam: no trainable parameters")
        self.members = self.params[0].shape[0]
        if any(p.shape[0] != self.members for p in self.params):
            raise ValueError("PopulationAdam: every parameter needs the same leading member axis")
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [0] * self.members

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: Optional[torch.Tensor] = None) -> None:
        moving = list(range(self.members)) if active is None else [int(i) for i in active.nonzero().flatten()]
        if not moving:
            return
        for i in moving:
            self.steps[i] += 1
        # per-member step sizes (members stopped by target KL have taken fewer steps)
        step_size = torch.zeros(self.members, dtype=torch.float64)
        bc2_sqrt = torch.ones(self.members, dtype=torch.float64)
        for i in moving:
            n = self.steps[i]
            step_size[i] = self.lr / (1 - self.beta1 ** n)
            bc2_sqrt[i] = math.sqrt(1 - self.beta2 ** n)
        everyone = len(moving) == self.members
        keep = None if everyone else torch.zeros(self.members, dtype=torch.bool)
        if keep is not None:
            keep[moving] = True
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            new_m = torch.lerp(m, g, 1 - self.beta1)
            new_v = v * self.beta2 + (1 - self.beta2) * g * g
            ss = _per_member(p, step_size.to(p.dtype))
            denom = new_v.sqrt() / _per_member(p, bc2_sqrt.to(p.dtype)) + self.eps
            update = ss * new_m / denom
            if keep is None:
                m.copy_(new_m)
                v.copy_(new_v)
                p.sub_(update)
            else:
                k = _per_member(p, keep)
                m.copy_(torch.where(k, new_m, m))
                v.copy_(torch.where(k, new_v, v))
                p.sub_(torch.where(k, update, torch.zeros_like(update)))
