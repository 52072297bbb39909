"""``lottery-fast report``: run the paper's default experiments and write figures plus ``report.md``.

Parts (each can be left out with ``parts``):

* ``performance``: IMP with the four conditions for RL (PPO) and BC (policy distillation) on each
  env of ``envs`` (CartPole-v1 and Acrobot-v1): the RL-vs-BC figure (tickets, min..max band over
  seeds) and the four-conditions figure (mean ± SD);
* ``distractors``: the PPO ticket on CartPole with task-irrelevant dims appended (noise, a
  constant): surviving input weights per dim and iteration, and when each dim is fully pruned;
* ``minimality``: dense agents retrained on only the dims the distractor ticket kept vs on the full
  input, same budget and seeds (:mod:`lottery_fast.analysis.minimality`);
* ``rescale``: the distractor experiment once per init rescaling mode (``rescale_modes``, see
  :mod:`lottery_fast.prune.rescale`): the input-layer mask with vs without rescaling, side by side.
  The mode the ``distractors`` part already ran (``none`` unless overridden) is not run twice;
* ``minatar`` and ``gridworld``: the PPO ticket (conv torso) on MinAtar Breakout and on the patrol
  gridworld with distractor channels: kept input weights per channel, iteration 0 vs the last.

Every experiment is an IMP run folder under ``OUT/runs/<name>`` (resumable: a rerun skips finished
units); figures go to ``OUT/figures`` and the summary to ``OUT/report.md``. All numbers in the
summary are computed from the run folders. ``OUT/runs/.gitignore`` keeps the checkpoints
(``seed_*/``, ``*.pt``) out of git, so an output folder can be committed as it is.

The package: :mod:`~lottery_fast.report.plan` (what runs: :class:`ReportConfig`, the parts, the
experiments of a preset), :mod:`~lottery_fast.report.data` (what is read back from run folders),
:mod:`~lottery_fast.report.render` (figures and report.md) and :mod:`~lottery_fast.report.run`
(runs the plan, then renders). Each imports only the ones before it.
"""
from .plan import DISTRACTORS, GRID_ENV, MINATAR_ENV, PARTS, SECTIONS, THRESHOLD, ReportConfig, plan, rescale_mode
from .run import run_report

__all__ = ["ReportConfig", "run_report", "plan", "rescale_mode", "PARTS", "SECTIONS", "THRESHOLD", "DISTRACTORS",
           "MINATAR_ENV", "GRID_ENV"]
