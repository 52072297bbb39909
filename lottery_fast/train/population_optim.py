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
    per-member state. ``step(active)`` moves only the members where ``active`` is True.

    The parameters, their gradients and both moments are re-homed into four flat buffers (each
    parameter a view), so that the common step, every member moving with the same step count, is
    a handful of ops over all weights instead of a handful per parameter; members that took
    different numbers of steps (target-KL stops) go through per-parameter, per-member scales.
    ``zero_grad`` zeroes the flat gradient in place, so backward accumulates into the views.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params: List[torch.Tensor] = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("PopulationAdam: no trainable parameters")
        self.members = self.params[0].shape[0]
        if any(p.shape[0] != self.members for p in self.params):
            raise ValueError("PopulationAdam: every parameter needs the same leading member axis")
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        with torch.no_grad():
            self._flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self._flat_grad = torch.zeros_like(self._flat)
        self._flat_m = torch.zeros_like(self._flat)
        self._flat_v = torch.zeros_like(self._flat)
        self._views = []
        offset = 0
        for p in self.params:
            n = p.numel()
            sl = slice(offset, offset + n)
            offset += n
            p.data = self._flat[sl].view_as(p)
            p.grad = self._flat_grad[sl].view_as(p)
            self._views.append((self._flat_grad[sl].view_as(p), self._flat_m[sl].view_as(p),
                                self._flat_v[sl].view_as(p)))
        self.exp_avg = [m for _, m, _ in self._views]
        self.exp_avg_sq = [v for _, _, v in self._views]
        self.steps = [0] * self.members

    def zero_grad(self) -> None:
        self._flat_grad.zero_()
        for p, (g, _, _) in zip(self.params, self._views):
            if p.grad is not g:
                p.grad = g

    def _gather_grads(self) -> None:
        # backward accumulates into the views; a gradient autograd handed over as a new tensor
        # (or None) is copied in, so the flat buffer always holds every member's gradient
        for p, (g, _, _) in zip(self.params, self._views):
            if p.grad is None:
                g.zero_()
            elif p.grad.data_ptr() != g.data_ptr():
                g.copy_(p.grad)
            p.grad = g

    @torch.no_grad()
    def step(self, active: Optional[torch.Tensor] = None) -> None:
        moving = list(range(self.members)) if active is None else [int(i) for i in active.nonzero().flatten()]
        if not moving:
            return
        self._gather_grads()
        for i in moving:
            self.steps[i] += 1
        # per-member step sizes (members stopped by target KL have taken fewer steps)
        step_size = torch.zeros(self.members, dtype=torch.float64)
        bc2_sqrt = torch.ones(self.members, dtype=torch.float64)
        for i in moving:
            n = self.steps[i]
            step_size[i] = self.lr / (1 - self.beta1 ** n)
            bc2_sqrt[i] = math.sqrt(1 - self.beta2 ** n)
        dtype = self._flat.dtype
        if len(moving) == self.members and len(set(self.steps)) == 1:
            # the same scale for everyone: one pass over the flat buffers (elementwise, as below)
            self._adam(self._flat, self._flat_grad, self._flat_m, self._flat_v,
                       step_size[:1].to(dtype), bc2_sqrt[:1].to(dtype), None)
            return
        keep = torch.zeros(self.members, dtype=torch.bool)
        keep[moving] = True
        for p, (g, m, v) in zip(self.params, self._views):
            self._adam(p.data, g, m, v, _per_member(p, step_size.to(dtype)), _per_member(p, bc2_sqrt.to(dtype)),
                       _per_member(p, keep))

    def _adam(self, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step_size: torch.Tensor,
              bc2_sqrt: torch.Tensor, keep: Optional[torch.Tensor]) -> None:
        new_m = torch.lerp(m, g, 1 - self.beta1)
        new_v = v * self.beta2 + (1 - self.beta2) * g * g
        update = step_size * new_m / (new_v.sqrt() / bc2_sqrt + self.eps)
        if keep is None:
            m.copy_(new_m)
            v.copy_(new_v)
            p.sub_(update)
        else:
            m.copy_(torch.where(keep, new_m, m))
            v.copy_(torch.where(keep, new_v, v))
            p.sub_(torch.where(keep, update, torch.zeros_like(update)))
