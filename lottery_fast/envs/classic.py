"""CartPole-v1 and Acrobot-v1 vectorised in NumPy: the ``"numpy"`` env backend.

Why: a population steps many small batches of these tasks; EnvPool spends about 50 us per call on
handing a batch to its worker thread, more than the physics of a whole population. Here one call
steps every env of every member with array arithmetic, and each env has its own seed
(``seeds[i]``), so a population's envs can be one batch while each member's episodes stay a function
of its own seed.

The dynamics, rewards, termination and time limits are gymnasium's (CartPole-v1: Euler
integration, reward 1 per step, 500 steps; Acrobot-v1: the "book" dynamics with RK4 over one
0.2 s step, reward -1 per step until the tip is high, 500 steps); a test checks them step for step
against gymnasium from the same states. Initial states are drawn from each env's own
``numpy.random.Generator`` (uniform in +-0.05 and +-0.1, as gymnasium does), so episodes are not
the ones EnvPool or gymnasium would start from the same seed. Next-step autoreset as in
:mod:`lottery_fast.envs.make`.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

#: env ids this backend runs
ENV_IDS = ("CartPole-v1", "Acrobot-v1")


class _Task:
    obs_dim: int
    n_actions: int
    max_episode_steps = 500
    init_range: float

    def observe(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, s: np.ndarray, a: np.ndarray):
        """(next state, reward, terminated) for states [n, 4] and actions [n]."""
        raise NotImplementedError


class _CartPole(_Task):
    obs_dim, n_actions, init_range = 4, 2, 0.05
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * np.pi / 360
    x_threshold = 2.4

    def observe(self, s: np.ndarray) -> np.ndarray:
        return s.astype(np.float32)

    def step(self, s: np.ndarray, a: np.ndarray):
        x, x_dot, theta, theta_dot = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
        force = np.where(a == 1, self.force_mag, -self.force_mag)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        ns = np.stack([x + self.tau * x_dot, x_dot + self.tau * xacc,
                       theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc], axis=1)
        terminated = ((ns[:, 0] < -self.x_threshold) | (ns[:, 0] > self.x_threshold)
                      | (ns[:, 2] < -self.theta_threshold) | (ns[:, 2] > self.theta_threshold))
        return ns, np.ones(len(s), np.float32), terminated


class _Acrobot(_Task):
    obs_dim, n_actions, init_range = 6, 3, 0.1
    dt = 0.2
    m1 = m2 = 1.0
    l1 = 1.0
    lc1 = lc2 = 0.5
    moi = 1.0
    max_vel_1, max_vel_2 = 4 * np.pi, 9 * np.pi
    torques = np.array([-1.0, 0.0, 1.0])

    def observe(self, s: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(s[:, 0]), np.sin(s[:, 0]), np.cos(s[:, 1]), np.sin(s[:, 1]), s[:, 2], s[:, 3]],
                        axis=1).astype(np.float32)

    def _dsdt(self, y: np.ndarray, torque: np.ndarray) -> np.ndarray:
        m1, m2, l1, lc1, lc2, I1, I2, g = self.m1, self.m2, self.l1, self.lc1, self.lc2, self.moi, self.moi, 9.8
        theta1, theta2, dtheta1, dtheta2 = y[:, 0], y[:, 1], y[:, 2], y[:, 3]
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * np.cos(theta2)) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * np.cos(theta2)) + I2
        phi2 = m2 * lc2 * g * np.cos(theta1 + theta2 - np.pi / 2.0)
        phi1 = (-m2 * l1 * lc2 * dtheta2**2 * np.sin(theta2) - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
                + (m1 * lc1 + m2 * l1) * g * np.cos(theta1 - np.pi / 2) + phi2)
        ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * np.sin(theta2) - phi2) / (
            m2 * lc2**2 + I2 - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], axis=1)

    def step(self, s: np.ndarray, a: np.ndarray):
        torque = self.torques[a]
        dt, dt2 = self.dt, self.dt / 2.0
        k1 = self._dsdt(s, torque)
        k2 = self._dsdt(s + dt2 * k1, torque)
        k3 = self._dsdt(s + dt2 * k2, torque)
        k4 = self._dsdt(s + dt * k3, torque)
        ns = s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        ns[:, 0] = _wrap(ns[:, 0])
        ns[:, 1] = _wrap(ns[:, 1])
        ns[:, 2] = np.clip(ns[:, 2], -self.max_vel_1, self.max_vel_1)
        ns[:, 3] = np.clip(ns[:, 3], -self.max_vel_2, self.max_vel_2)
        terminated = -np.cos(ns[:, 0]) - np.cos(ns[:, 1] + ns[:, 0]) > 1.0
        return ns, np.where(terminated, 0.0, -1.0).astype(np.float32), terminated


def _wrap(x: np.ndarray) -> np.ndarray:
    """Angles into [-pi, pi) as gymnasium's ``wrap`` (which adds or subtracts whole turns)."""
    turn = 2 * np.pi
    out = x.copy()
    while True:
        hi, lo = out > np.pi, out < -np.pi
        if not (hi.any() or lo.any()):
            return out
        out = np.where(hi, out - turn, np.where(lo, out + turn, out))


_TASKS: Dict[str, type] = {"CartPole-v1": _CartPole, "Acrobot-v1": _Acrobot}


class NumpyClassicBackend:
    """The backend interface of :mod:`lottery_fast.envs.make` (``reset``, ``send``, ``recv``, spaces)
    for ``len(seeds)`` envs, env ``i`` seeded with ``seeds[i]``."""

    def __init__(self, env_id: str, seeds: Sequence[int], kwargs: Dict[str, Any]) -> None:
        from gymnasium import spaces

        if env_id not in _TASKS:
            raise ValueError(f"the numpy env backend runs {list(ENV_IDS)}, not {env_id!r}")
        if kwargs:
            raise ValueError(f"the numpy env backend takes no env kwargs, got {sorted(kwargs)}")
        self.task: _Task = _TASKS[env_id]()
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        n = len(self.rngs)
        high = np.full(self.task.obs_dim, np.inf, np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.task.n_actions)
        self.max_episode_steps = self.task.max_episode_steps
        self.state = np.zeros((n, 4))
        self.elapsed = np.zeros(n, np.int64)
        self.needs_reset = np.zeros(n, bool)
        self._actions = np.zeros(n, np.int64)

    def _draw(self, envs: np.ndarray) -> None:
        r = self.task.init_range
        for i in envs:
            self.state[i] = self.rngs[i].uniform(-r, r, 4)
        self.elapsed[envs] = 0

    def reset(self) -> np.ndarray:
        self._draw(np.arange(len(self.rngs)))
        self.needs_reset[:] = False
        return self.task.observe(self.state)

    def send(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, np.int64)

    def recv(self):
        a = self._actions
        if a.min(initial=0) < 0 or a.max(initial=0) >= self.task.n_actions:
            raise ValueError(f"actions must be in [0, {self.task.n_actions}), got {a}")
        resetting = self.needs_reset
        ns, reward, terminated = self.task.step(self.state, a)
        self.state = ns
        self.elapsed += 1
        truncated = ~terminated & (self.elapsed >= self.task.max_episode_steps)
        if resetting.any():  # next-step autoreset: these envs only start a new episode
            envs = np.flatnonzero(resetting)
            self._draw(envs)
            reward[envs] = 0.0
            terminated[envs] = False
            truncated[envs] = False
        self.needs_reset = terminated | truncated
        return self.task.observe(self.state), reward, terminated, truncated

    def close(self) -> None:
        pass
