"""Actor-critic networks of masked layers for PPO and behavioural cloning.

Module layout (names as :func:`lottery_fast.nn.masked_modules` reports them)::

    obs_norm            ObsNormalizer (only with observation normalisation): buffers, no weights
    actor.encoder.{0,2,..}  MaskedConv2d layers (image observations only)
    actor.body.{0,2,..}     MaskedLinear hidden layers
    actor.head              MaskedLinear: logits (discrete) or action mean (continuous)
    actor.log_std           Parameter (continuous only; state-independent, never pruned)
    critic.encoder.* / critic.body.* / critic.head   the same for the value function

Actor and critic share nothing, so the pattern ``"critic*"`` excludes the whole critic from
pruning. Initialisation (``NetworkConfig.init``), drawn from a generator seeded by the caller, so a
model is a pure function of its seed:

* ``"orthogonal"`` (default), CleanRL's: orthogonal weights (gain sqrt(2) for hidden layers,
  ``actor_head_gain`` = 0.01 and ``critic_head_gain`` = 1 for the heads), zero biases. Input and
  hidden layers start on one weight scale (RMS sqrt(2 / fan_out) up to the orthogonal structure).
* ``"torch_default"``: what ``nn.Linear``/``nn.Conv2d`` draw themselves (kaiming-uniform with
  a = sqrt(5)): weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the heads included (their
  gains are not used). Each layer's scale follows its fan-in, so a 4-input layer starts 4x larger
  than a 64-input one: the case the paper's init rescaling addresses (lottery_fast/prune/rescale.py).

Image observations go through ``NetworkConfig.image_torso``: a conv encoder (``"conv"``, default) or
nothing but a flatten (``"mlp"``), so the first body layer ``actor.body.0`` has one weight per
(channel, row, col) input and its mask can be read per cell (torch's flatten order c*H*W + y*W + x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..envs.make import EnvSpec
from ..nn import MaskedConv2d, MaskedLinear
from ..nn.activation import Tanh
from .common import torch_threads

_ACTIVATIONS = {"tanh": Tanh, "relu": nn.ReLU}
#: Nature-DQN torso for Atari-sized frames; small 3x3 stack for gridworld-sized ones
_NATURE_CONV = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
_SMALL_CONV = ((16, 3, 1), (32, 3, 1))
_LOG_2PI = math.log(2.0 * math.pi)
INITS = ("orthogonal", "torch_default")
IMAGE_TORSOS = ("conv", "mlp")


@dataclass(frozen=True)
class NetworkConfig:
    hidden: Tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    #: conv layers (out_channels, kernel, stride) for image observations; None picks by frame
    #: size: Nature-DQN for frames of at least 36 pixels a side, two 3x3 layers below that
    conv: Optional[Tuple[Tuple[int, int, int], ...]] = None
    actor_head_gain: float = 0.01
    critic_head_gain: float = 1.0
    init_log_std: float = 0.0
    #: weight init scheme (see the module docstring): CleanRL's "orthogonal" or PyTorch's "torch_default"
    init: str = "orthogonal"
    #: torso for image observations: "conv" layers, or "mlp" (the flattened image into the body)
    image_torso: str = "conv"

    def __post_init__(self) -> None:
        self.validate()  # a bad value fails where the config is made, not when training starts

    def validate(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive sizes, got {self.hidden!r}")
        if self.conv is not None and any(len(c) != 3 or min(c) < 1 for c in self.conv):
            raise ValueError(f"conv must be (out_channels, kernel, stride) triples, got {self.conv!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if self.image_torso not in IMAGE_TORSOS:
            raise ValueError(f"image_torso must be one of {list(IMAGE_TORSOS)}, got {self.image_torso!r}")
        if self.image_torso == "mlp" and self.conv is not None:
            raise ValueError(f"conv layers {self.conv!r} are given but image_torso is 'mlp' (no conv layers): "
                             "drop one of the two")


class ObsNormalizer(nn.Module):
    """Running mean/variance of observations (parallel-merge update) as buffers of the model.

    Being buffers, the statistics are saved with ``state_dict`` and rewound by IMP with the
    weights; they change only when a trainer calls :meth:`update` during its rollouts.
    """

    def __init__(self, shape: Sequence[int], clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = float(clip), float(eps)
        self.register_buffer("mean", torch.zeros(tuple(shape), dtype=torch.float64))
        self.register_buffer("var", torch.ones(tuple(shape), dtype=torch.float64))
        # starts at eps (as gymnasium's RunningMeanStd) so the first merge is all new data
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        x = batch.to(torch.float64).reshape(-1, *self.mean.shape)
        n = x.shape[0]
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = (obs.to(torch.float64) - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp_(-self.clip, self.clip).to(torch.float32)


def _conv_spec(cfg: NetworkConfig, obs_shape: Tuple[int, ...]) -> Tuple[Tuple[int, int, int], ...]:
    if cfg.conv is not None:
        return cfg.conv
    return _NATURE_CONV if min(obs_shape[1:]) >= 36 else _SMALL_CONV


class _Net(nn.Module):
    """Optional conv encoder, MLP body, linear head: one of actor or critic."""

    def __init__(self, obs_shape: Tuple[int, ...], out: int, cfg: NetworkConfig) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        width = obs_shape[0]
        self.encoder: Optional[nn.Sequential]
        if len(obs_shape) == 3 and cfg.image_torso == "mlp":
            self.encoder = nn.Sequential(nn.Flatten())
            width = math.prod(obs_shape)
        elif len(obs_shape) == 3:
            layers = []
            channels = obs_shape[0]
            for c, k, s in _conv_spec(cfg, obs_shape):
                layers += [MaskedConv2d(channels, c, k, stride=s), nn.ReLU()]
                channels = c
            layers.append(nn.Flatten())
            self.encoder = nn.Sequential(*layers)
            with torch.no_grad():
                width = int(self.encoder(torch.zeros(1, *obs_shape)).shape[1])
        else:
            self.encoder = None
        body = []
        for h in cfg.hidden:
            body += [MaskedLinear(width, int(h)), act()]
            width = int(h)
        self.body = nn.Sequential(*body)
        self.head = MaskedLinear(width, out)

    def init_(self, head_gain: float, generator: torch.Generator, scheme: str = "orthogonal") -> None:
        hidden = [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m is not self.head]
        for m in hidden + [self.head]:
            with torch.no_grad():
                if scheme == "torch_default":
                    # the draws of nn.Linear/nn.Conv2d.reset_parameters, in its order, from our generator
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5.0), generator=generator)
                    if m.bias is not None:
                        bound = 1.0 / math.sqrt(m.weight[0].numel())
                        m.bias.uniform_(-bound, bound, generator=generator)
                else:
                    gain = head_gain if m is self.head else math.sqrt(2.0)
                    nn.init.orthogonal_(m.weight, gain=gain, generator=generator)
                    if m.bias is not None:
                        m.bias.zero_()
            if hasattr(m, "apply_mask_"):
                m.apply_mask_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            x = self.encoder(x)
        return self.head(self.body(x))


class ActorCritic(nn.Module):
    """Separate actor and critic over shared observation preprocessing.

    Two entry points take observations: :meth:`preprocess` turns raw env observations into network
    inputs (normalised vectors, or images scaled to [0, 1]); everything else takes those inputs.
    ``forward(raw_obs)`` returns the actor's output (logits or action mean) for raw observations.
    """

    def __init__(self, spec: EnvSpec, cfg: NetworkConfig = NetworkConfig(), norm_obs: bool = False) -> None:
        super().__init__()
        cfg.validate()
        if norm_obs and spec.is_image:
            raise ValueError("observation normalisation is for vector observations, not images")
        self.discrete = spec.discrete
        self.image = spec.is_image
        self.obs_norm = ObsNormalizer(spec.obs_shape) if norm_obs else None
        out = spec.n_actions if spec.discrete else int(spec.action_shape[0])
        self.actor = _Net(spec.obs_shape, out, cfg)
        if not spec.discrete:
            self.actor.log_std = nn.Parameter(torch.full((out,), float(cfg.init_log_std)))
        self.critic = _Net(spec.obs_shape, 1, cfg)
        self._cfg = cfg

    def init_(self, seed: int) -> "ActorCritic":
        """Re-draw all weights from ``seed`` (the scheme of ``NetworkConfig.init``); returns self."""
        g = torch.Generator().manual_seed(int(seed))
        # orthogonal_ runs a QR whose last bits depend on the LAPACK thread count: one thread keeps
        # an init the same in every process, so a run resumed elsewhere passes its init check
        with torch_threads(1):
            self.actor.init_(self._cfg.actor_head_gain, g, self._cfg.init)
            self.critic.init_(self._cfg.critic_head_gain, g, self._cfg.init)
        if not self.discrete:
            with torch.no_grad():
                self.actor.log_std.fill_(float(self._cfg.init_log_std))
        return self

    # -- observations ----------------------------------------------------------------------
    def preprocess(self, obs: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        if self.image:  # pixels are scaled to [0, 1]; float grids (MinAtar, gridworld) already are
            return obs.to(torch.float32) / 255.0 if obs.dtype == torch.uint8 else obs.to(torch.float32)
        if self.obs_norm is None:
            return obs.to(torch.float32)
        if update_stats:
            self.obs_norm.update(obs)
        return self.obs_norm(obs)

    # -- policy and value ------------------------------------------------------------------
    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.preprocess(obs))

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """An action per row of ``x`` drawn from ``generator``, and its log-probability."""
        out = self.actor(x)
        if self.discrete:
            return sample_action(out, None, torch.rand(out.shape, generator=generator))
        return sample_action(out, self.actor.log_std, torch.randn(out.shape, generator=generator))

    def log_prob_entropy(self, x: torch.Tensor, action: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return log_prob_entropy(self.actor(x), self.actor.log_std if not self.discrete else None, action)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action for raw observations: argmax or the Gaussian mean."""
        out = self.forward(obs)
        return out.argmax(-1) if self.discrete else out


def sample_action(out: torch.Tensor, log_std: Optional[torch.Tensor],
                  noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Action and log-probability from the actor's output and pre-drawn noise of its shape:
    uniform noise for discrete actions (``log_std`` None), standard normal for Gaussian ones."""
    if log_std is None:
        logp_all = torch.log_softmax(out, -1)
        # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample
        u = noise.clamp_(min=1e-20)
        action = (logp_all - torch.log(-torch.log(u))).argmax(-1)
        return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    log_std = log_std.expand_as(out)
    action = out + torch.exp(log_std) * noise
    return action, _gaussian_logp(action, out, log_std)


def log_prob_entropy(out: torch.Tensor, log_std: Optional[torch.Tensor],
                     action: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``action`` and the entropy under the actor's output ``out``
    (categorical when ``log_std`` is None, else a diagonal Gaussian)."""
    if log_std is None:
        logp_all = torch.log_softmax(out, -1)
        logp = logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy
    log_std = log_std.expand_as(out)
    entropy = (0.5 + 0.5 * _LOG_2PI + log_std).sum(-1)
    return _gaussian_logp(action, out, log_std), entropy


def _gaussian_logp(action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * _LOG_2PI).sum(-1)


def build_actor_critic(spec: EnvSpec, seed: int, cfg: NetworkConfig = NetworkConfig(),
                       norm_obs: bool = False) -> ActorCritic:
    """A freshly initialised :class:`ActorCritic` for ``spec``, a pure function of ``seed``."""
    return ActorCritic(spec, cfg, norm_obs=norm_obs).init_(seed)
