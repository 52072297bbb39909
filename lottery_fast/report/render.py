"""Figures and ``report.md`` of ``lottery-fast report``, from finished run folders only (read by
:mod:`lottery_fast.report.data`).

Every number written here is read from ``results.csv``, the saved masks or the minimality cache,
and every sentence that states a finding is built from :mod:`lottery_fast.analysis.findings`.
"""
from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .._atomic import atomic_write_text
from ..analysis.curves import Curve, plot_panels, return_floor
from ..analysis.break_levels import break_levels, compare_break_levels, metric_by_level
from ..analysis.findings import (InputDimFacts, channel_table, compare_modes, compare_retention, condition_gaps,
                                 condition_summaries, input_dim_facts, mode_summary, retention)
from ..experiments import Experiment, Log
from ..imp import TICKET
from ..prune import condition_names
from ..train.registry import short_name
from . import data
from .plan import THRESHOLD, ReportConfig, rescale_mode


def _table(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    if not rows:
        return ["(no rows)"]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return lines


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


class _Writer:
    def __init__(self, cfg: ReportConfig, experiments: Sequence[Experiment], folders: Mapping[str, Path],
                 log: Log) -> None:
        self.cfg, self.folders, self.log = cfg, folders, log
        self.plan = list(experiments)
        self.exps = [e for e in experiments if e.name in folders]
        self.figures = cfg.out / "figures"
        self.figures.mkdir(parents=True, exist_ok=True)
        self.lines: List[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def image(self, path: Path, alt: str) -> None:
        self.add(f"![{alt}]({_rel(path, self.cfg.out)})", "")

    # -- budgets -------------------------------------------------------------------------------
    def budgets(self) -> None:
        rows = []
        for e in self.exps:
            imp = e.config["imp"]
            sec = data.trainer_config(self.folders[e.name])
            if e.paradigm == "bc":
                budget = (f"{sec.get('steps', '?')} optimizer steps (expert: "
                          f"{(sec.get('expert') or {}).get('total_steps', '?')} env steps)")
            else:
                budget = f"{sec.get('total_steps', '?')} env steps"
            rows.append({"experiment": e.name, "env": e.env_id, "learner": short_name(e.paradigm),
                         "IMP": f"{imp.get('iterations')} x rate {imp.get('rate')}",
                         "seeds": imp.get("seeds"), "conditions": imp.get("conditions", "all"),
                         "budget per training": budget})
        self.add("## Experiments and budgets", "", *_table(rows), "")

    # -- 1 and 2: performance ------------------------------------------------------------------
    def curves(self, e: Experiment) -> Dict[str, Curve]:
        return data.curves(self.folders[e.name], e.env_id)

    def performance(self) -> None:
        perf = [e for e in self.exps if e.part == "performance"]
        if not perf:
            return
        envs = list(dict.fromkeys(e.env_id for e in perf))
        by = {(e.env_id, e.paradigm): e for e in perf}
        curves = {k: self.curves(e) for k, e in by.items()}
        untrained = [k for k, cs in curves.items() if TICKET not in cs]
        for k in untrained:  # dense return at the floor in every seed: nothing to normalise by
            del curves[k]
        self.add("## 1. RL vs behavioural cloning", "",
                 "Normalised performance = (best evaluation return - floor) / (dense return - floor), per seed "
                 "(floor: the task's lowest return, 0 for CartPole, -500 for Acrobot); lines are the mean over "
                 "seeds, bands min..max. Weights remaining: share of the actor's prunable weights (the critic is "
                 "never pruned).", "")
        panels, titles = [], []
        for env in envs:
            panel = {f"{short_name(p)} ticket": curves[(env, p)][TICKET] for p in ("ppo", "bc")
                     if (env, p) in curves and TICKET in curves[(env, p)]}
            panels.append(panel)
            titles.append(env)
        fig = plot_panels(panels, self.figures / "rl_vs_bc.png", titles, band="range")
        self.image(fig, "RL vs BC tickets")
        rows, verdicts = [], []
        for env in envs:
            ret = {}
            for p in ("ppo", "bc"):
                if (env, p) not in curves:
                    continue
                raw = [float(r["best_metric"]) for r in data.ticket_rows(self.folders[by[(env, p)].name])
                       if int(r["iteration"]) == 0]
                ret[p] = retention(curves[(env, p)][TICKET], THRESHOLD)
                rnd = curves[(env, p)].get("random/reinit")
                rows.append({"env": env, "learner": short_name(p), "dense return (mean of seeds)": _f(float(np.mean(raw)), 4),
                             "ticket": ret[p].describe(),
                             "random/reinit": retention(rnd, THRESHOLD).describe() if rnd else "not run"})
            if len(ret) == 2:
                answer, why = compare_retention(ret["ppo"], ret["bc"])
                verdicts.append(f"- {env}, from the mean curves: RL needs more weights than BC at the "
                                f"{100 * THRESHOLD:.0f}% threshold: {answer} ({why}).")
                verdicts.append(self.paired_verdict(env, by[(env, "ppo")], by[(env, "bc")]))
        notes = [f"- {env}, {short_name(p)}: the dense agent's return equals the task's floor in every seed, so "
                 "performance cannot be normalised; left out (budget too small to learn)." for env, p in untrained]
        self.add(*_table(rows), "", *verdicts, *notes, "")
        self.learning_curve_areas(perf)

        self.add("## 2. The four conditions", "",
                 "mask/weights is the ticket; mask/permuted keeps the mask and shuffles the kept initial values "
                 "within each layer; permuted/permuted shuffles the mask too; random/reinit is a random mask of the "
                 "same size on fresh weights. Mean over seeds, bands min..max.", "")
        keys = [(env, p) for env in envs for p in ("ppo", "bc") if (env, p) in curves]
        fig = plot_panels([curves[k] for k in keys], self.figures / "conditions.png",
                          [f"{env}: {short_name(p)}" for env, p in keys], band="range")
        self.image(fig, "four conditions")
        for k in keys:
            cs = curves[k]
            levels = sorted({lv for c in cs.values() for lv in c.remaining}, reverse=True)
            rows = []
            for lv in levels:
                row: Dict[str, Any] = {"weights left": f"{lv:.3g}%"}
                for cond in condition_names():
                    c = cs.get(cond)
                    if c is None or lv not in c.remaining:
                        row[cond] = ""
                        continue
                    i = c.remaining.index(lv)
                    row[cond] = f"{c.mean[i]:.2f} [{c.low[i]:.2f}, {c.high[i]:.2f}]"
                rows.append(row)
            self.add(f"**{k[0]}, {short_name(k[1])}** (normalised best return, mean [min, max] over seeds)", "",
                     *_table(rows), "")
            facts = []
            for s in condition_summaries(list(cs.values())):
                facts.append(f"{s.condition} {s.mean_pruned:.2f}")
            self.add(f"- mean over the pruned levels: {', '.join(facts)}.")
            for a, b in (("mask/permuted", "permuted/permuted"), ("mask/permuted", "random/reinit"),
                         (TICKET, "mask/permuted")):
                gap = condition_gaps(list(cs.values()), a, b)
                if gap is not None:
                    won, n, mean = gap
                    self.add(f"- {a} >= {b} at {won} of {n} pruned levels (mean difference {mean:+.2f}).")
            self.add("")

    def paired_verdict(self, env: str, rl: Experiment, bc: Experiment) -> str:
        """Claim 1 per seed: each seed's break level (first level below the threshold of its own dense
        return) for RL and for BC, and the paired comparison over seeds (see analysis.break_levels)."""
        floor = return_floor(env)
        rl_rows, bc_rows = data.rows(self.folders[rl.name]), data.rows(self.folders[bc.name])
        rl_b = break_levels(rl_rows, TICKET, "best_metric", THRESHOLD, floor)
        bc_b = break_levels(bc_rows, TICKET, "best_metric", THRESHOLD, floor)
        try:
            cmp = compare_break_levels(rl_b, bc_b, rate=rl.config["imp"].get("rate"))
        except ValueError as e:
            return f"- **{env}, per seed: RL needs more weights than BC: not comparable** ({e})."
        return (f"- **{env}, per seed: RL needs more weights than BC: {cmp.verdict}** ({cmp.describe()})")

    def learning_curve_areas(self, perf: Sequence[Experiment]) -> None:
        """Mean evaluation through training per level: unlike the best evaluation it does not
        saturate at the task's maximum, so it separates conditions the best-of-evaluations cannot."""
        parts = []
        for e in perf:
            rows = data.rows(self.folders[e.name])
            if not any(r.get("extra/eval_mean") is not None for r in rows):
                continue  # a run made before eval_mean was recorded
            table = []
            stats = {c: {s.iteration: s for s in metric_by_level(rows, c, "extra/eval_mean")} for c in condition_names()}
            iterations = sorted({i for st in stats.values() for i in st})
            for it in iterations:
                ticket = stats[TICKET].get(it)
                row: Dict[str, Any] = {"weights left": f"{100 * ticket.density:.3g}%" if ticket else ""}
                row.update({c: f"{st[it].mean:.1f} ± {st[it].std:.1f}" if it in st else "" for c, st in stats.items()})
                table.append(row)
            parts += [f"**{e.env_id}, {short_name(e.paradigm)}**: mean evaluation return through training "
                      "(area under the learning curve), mean ± SD over seeds", "", *_table(table), ""]
        if parts:
            self.add("### Area under the learning curve", "", *parts)

    # -- 3: input masks ------------------------------------------------------------------------
    def distractors(self) -> Optional[Dict[int, Any]]:
        exp = next((e for e in self.exps if e.part == "distractors"), None)
        if exp is None:
            return None
        self.add("## 3. Input masks", "", f"### {exp.env_id} with distractor dims", "",
                 f"Distractors appended to the observation: {', '.join(exp.config['ppo'].get('distractors', []))}. "
                 "Share of the input layer's weights kept per input dim at every IMP iteration "
                 "(PPO ticket; one figure per seed).", "")
        facts = {}
        rows: Dict[str, Dict[str, Any]] = {}
        for seed, rep, f in self.input_facts(exp):
            png = [p for p in rep.files if p.suffix == ".png"][0]
            self.image(png, f"input dims seed {seed}")
            facts[seed] = f
            for name in f.real + f.distractors:
                row = rows.setdefault(name, {"input dim": name, "kind": "distractor" if name in f.distractors
                                             else "task"})
                gone = f.pruned_at[name]
                row[f"seed {seed}: kept at iter {f.last_iteration}"] = f"{100 * f.kept_last[name]:.1f}%"
                row[f"seed {seed}: fully pruned at"] = "-" if gone is None else f"iter {gone}"
        self.add(*_table(list(rows.values())), "")
        for seed, f in facts.items():
            self.add(f"- seed {seed} (iteration {f.last_iteration}, {_f(f.last_remaining)}% of the actor's weights "
                     f"left): distractors fully pruned: {len(f.distractors_pruned)} of {len(f.distractors)} "
                     f"({', '.join(f.distractors_pruned) or 'none'}); task dims fully pruned: "
                     f"{len(f.real_pruned)} of {len(f.real)} ({', '.join(f.real_pruned) or 'none'}); "
                     f"every distractor gone no later than any task dim: {f.distractors_first()}; "
                     f"mean share kept: task dims {100 * f.mean_kept(f.real):.1f}%, distractors "
                     f"{100 * f.mean_kept(f.distractors):.1f}%.")
        self.add("")
        self.distractor_ranks(exp)
        return facts

    def distractor_ranks(self, exp: Experiment) -> None:
        """The rank statistic per round (analysis.distractor_rank): does every distractor keep fewer
        input weights than the weakest task dim? Noise, copies and the constant scored apart."""
        from ..analysis.distractor_rank import run_rank
        from ..analysis.input_mask import write_table

        rank = run_rank(self.folders[exp.name])
        write_table(rank.rows(), self.figures / exp.name / "distractor_rank.csv")
        self.add("Rank statistic per pruned round (every distractor of a group below the weakest task dim):", "",
                 *(f"- {s.sentence()}." for s in rank.summary.values()), "")

    def input_facts(self, exp: Experiment) -> List[Tuple[int, Any, InputDimFacts]]:
        """Per seed of a vector-input run: its input mask report (CSV and figure under
        ``figures/<name>/``) and the facts about its task dims and distractors."""
        from ..analysis.run_masks import input_mask_report

        folder = self.folders[exp.name]
        out = []
        for seed in data.seeds(folder):
            rep = input_mask_report(folder, self.figures / exp.name, seed=seed)
            out.append((int(seed), rep, input_dim_facts(rep.survival, len(rep.inputs.distractors))))
        return out

    # -- 5: init rescaling ---------------------------------------------------------------------
    def rescale(self) -> None:
        if "rescale" not in self.cfg.parts:
            return
        from ..analysis.input_mask import plot_input_dim_panels
        from ..analysis.run_masks import layer_init_rms

        runs = {rescale_mode(e): e for e in self.exps if e.part in ("distractors", "rescale")}
        modes = [m for m in self.cfg.rescale_modes if m in runs]
        if not modes:
            return
        env = runs[modes[0]].env_id
        self.add("## 5. Init rescaling: the input mask with vs without", "",
                 f"The {env} distractor experiment (PPO ticket, same distractors, budget and seeds) once per init "
                 "rescaling mode, applied to the initial weights before IMP (`lottery_fast/prune/rescale.py`): "
                 "`none` keeps the network's own init; `fan_in` multiplies each layer's W by "
                 "sqrt(fan_in / largest fan_in); `rms` scales each layer to the RMS of the widest layer. Global "
                 "magnitude pruning compares weights across layers, so the init scale of the input layer decides "
                 "how early its weights compete. Figure: share of the input layer's weights kept per input dim, "
                 "mean over seeds, band min..max; per-seed figures and CSVs are in `figures/<experiment>/`.", "")
        facts = {m: self.input_facts(runs[m]) for m in modes}
        png = plot_input_dim_panels({f"rescale {m}": [rep.survival for _, rep, _ in facts[m]] for m in modes},
                                    self.figures / "rescale_input_dims.png",
                                    title=f"{env}: kept input-layer weights per input dim, by init rescaling")
        self.image(png, "input dims by init rescaling")
        rows, summaries = [], []
        for m in modes:
            ticket = data.ticket_rows(self.folders[runs[m].name])
            last = max(int(r["iteration"]) for r in ticket)
            dense = [float(r["best_metric"]) for r in ticket if int(r["iteration"]) == 0]
            final = [float(r["best_metric"]) for r in ticket if int(r["iteration"]) == last]
            summ = mode_summary(m, [f for _, _, f in facts[m]], float(np.mean(final)))
            summaries.append(summ)
            f0 = facts[m][0][2]
            rows.append({"rescale": m, "experiment": runs[m].name,
                         "dense best return": _f(float(np.mean(dense)), 4),
                         f"ticket best return at iter {last}": f"{_f(float(np.mean(final)), 4)} "
                                                                f"[{_f(min(final), 4)}, {_f(max(final), 4)}]",
                         "weights left": f"{_f(f0.last_remaining)}%",
                         "seeds with every distractor pruned": f"{summ.all_distractors_pruned}/{summ.seeds}",
                         "distractor dims pruned": f"{summ.distractors_pruned}/{summ.distractor_pairs}",
                         "task dims pruned": f"{summ.task_pruned}/{summ.task_pairs}"})
        self.add("Mean over seeds, [min, max]; dims pruned are counted over (seed, dim) pairs at the last "
                 "iteration.", "", *_table(rows), "")
        seed0 = {m: facts[m][0][0] for m in modes}
        scales = {m: layer_init_rms(self.folders[runs[m].name], seed0[m]) for m in modes}
        self.add("Initial weight scale each mode gives IMP (RMS of each prunable layer's weights at the rewind "
                 "point, first seed):", "",
                 *_table([{"rescale": m, **{layer: f"{rms:.3g}" for layer, rms in scales[m].items()}}
                          for m in modes]), "")
        dims: Dict[str, Dict[str, Any]] = {}
        for m in modes:
            seeds = [seed for seed, _, _ in facts[m]]
            for name in facts[m][0][2].real + facts[m][0][2].distractors:
                row = dims.setdefault(name, {"input dim": name,
                                             "kind": "distractor" if name in facts[m][0][2].distractors else "task"})
                row[f"{m}: kept at last iter (seeds {'/'.join(map(str, seeds))})"] = " / ".join(
                    f"{100 * f.kept_last[name]:.1f}%" for _, _, f in facts[m])
                row[f"{m}: fully pruned at"] = " / ".join(
                    "-" if f.pruned_at[name] is None else f"iter {f.pruned_at[name]}" for _, _, f in facts[m])
        self.add("Per input dim and seed: share of its weights kept at the last iteration, and the iteration "
                 "from which it has none left (- : never).", "", *_table(list(dims.values())), "")
        self.add(*(f"- **Finding:** {line}." for line in compare_modes(summaries)), "")

    def images(self, skipped: Mapping[str, str]) -> None:
        for part, title in (("minatar", "MinAtar Breakout channels"), ("gridworld", "Patrol gridworld channels")):
            exps = [e for e in self.plan if e.part == part]
            if not exps:
                continue
            exp = exps[0]
            self.add(f"### {title}", "")
            if exp.name in skipped:
                self.add(f"Skipped: {skipped[exp.name]}", "")
                continue
            self.image_part(exp)

    def image_part(self, exp: Experiment) -> None:
        from ..analysis.input_mask import image_input_survival, plot_image_survival, write_table
        from ..analysis.run_masks import input_layer
        from ..imp import load_mask_history

        folder = self.folders[exp.name]
        seed = data.seeds(folder)[0]
        history = load_mask_history(folder, seed)
        layer = input_layer(history)
        mlp = history[min(history)][layer].dim() == 2  # an MLP torso on the flattened frame: one weight per cell
        frame = data.frame_shape(folder, exp.env_id) if mlp else None
        surv = image_input_survival(history, layer, frame, channel_names=data.channel_names(folder, exp.env_id))
        out = self.figures / exp.name
        write_table(surv.rows(), out / f"input_channels_seed{seed}.csv")
        what = "cell" if mlp else "kernel position"
        png = plot_image_survival(surv, out / f"input_{'cells' if mlp else 'kernels'}_seed{seed}.png",
                                  title=f"{exp.env_id}: kept {layer} weights per channel and {what} (seed {seed})")
        self.add(f"Input layer {layer} ({'an MLP on the flattened frame' if mlp else 'a conv'}: each panel shows "
                 f"the kept share per {what}), seed {seed}, iteration 0 vs the last.", "")
        self.image(png, exp.name)
        if mlp and exp.env_id.startswith("lottery_fast/PatrolGrid"):
            from ..analysis.mask_images import gridworld_cell_masks, plot_cell_masks

            cells = plot_cell_masks(gridworld_cell_masks(folder, seed), out / f"enemy_cells_seed{seed}.png")
            self.add("The enemy channel's kept share per cell, iteration 0 vs the last, beside its patrol route:", "")
            self.image(cells, "enemy channel per cell")
        self.add(*_table(channel_table(surv.channel_names, surv.channel_fraction, surv.iterations,
                                       surv.fully_pruned_at)), "")
        returns = {int(r["iteration"]): float(r["best_metric"]) for r in data.ticket_rows(folder)
                   if int(r["seed"]) == seed}
        gone = [n for n, p in zip(surv.channel_names, surv.fully_pruned_at) if p is not None]
        self.add(f"- channels fully pruned by iteration {surv.iterations[-1]} "
                 f"({100 * surv.remaining[-1]:.3g}% of the actor's weights left): {', '.join(gone) or 'none'}.",
                 "- ticket best return per iteration: "
                 + ", ".join(f"iter {it}: {_f(v)}" for it, v in sorted(returns.items())) + ".", "")

    # -- 4: minimality -------------------------------------------------------------------------
    def minimality(self, result: Any, facts: Optional[Mapping[int, Any]]) -> None:
        if result is None:
            return
        exp = next(e for e in self.plan if e.part == "distractors")
        names = data.obs_names(self.folders[exp.name], exp.env_id, exp.config["ppo"].get("distractors", []))
        self.add("## 4. Minimality check", "",
                 f"Dense PPO agents trained from scratch on only the input dims the {exp.env_id} distractor ticket "
                 "kept at its last iteration (any surviving weight), next to dense agents on the full input "
                 "(task dims and distractors), same budget and seeds. Final evaluation return "
                 "(deterministic policy).", "")
        rows = []
        for full, kept in zip(result.full, result.minimal):
            dims = [names[i] if i < len(names) else str(i) for i in result.kept[kept.seed]]
            rows.append({"seed": kept.seed, "kept dims": ", ".join(dims) + f" ({len(dims)} of {len(names)})",
                         "full input: final return": _f(full.metric, 4), "kept dims: final return": _f(kept.metric, 4),
                         "full: best": _f(full.best_metric, 4), "kept: best": _f(kept.best_metric, 4)})
        self.add(*_table(rows), "")
        floor = return_floor(exp.env_id)
        ratio = (result.minimal_mean - floor) / (result.full_mean - floor) if result.full_mean != floor else math.nan
        self.add(f"- mean final return: full input {_f(result.full_mean, 4)}, kept dims only "
                 f"{_f(result.minimal_mean, 4)} ({_f(100 * ratio)}% of the full-input agent).", "")


def write_report(cfg: ReportConfig, experiments: Sequence[Experiment], folders: Mapping[str, Path],
                 skipped: Mapping[str, str], minimal: Any, seconds: float, log: Log) -> Path:
    """Write the figures and ``cfg.out / "report.md"``; returns the report's path."""
    w = _Writer(cfg, experiments, folders, log)
    w.cfg_plan = list(experiments)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sets = "".join(f" --set {s}" for s in cfg.overrides)
    seeds = "" if cfg.seeds is None else f" --seeds {cfg.seeds}"
    modes = f" --rescale-modes {','.join(cfg.rescale_modes)}" if "rescale" in cfg.parts else ""
    trained = data.train_seconds(list(folders.values()))
    w.add(f"# lottery_fast report: preset `{cfg.preset}`", "",
          f"Written {now} by `lottery-fast report --preset {cfg.preset}{seeds}{modes} --parts {','.join(cfg.parts)} "
          f"--envs {','.join(cfg.envs)}{sets}`. Training time recorded in the IMP run folders: "
          f"{trained / 60:.1f} min (minimality check not included); this call took {seconds / 60:.1f} min "
          "(finished units of earlier calls are reused, not rerun). Every number below is computed from the "
          "run folders in `runs/`.", "")
    w.budgets()
    w.performance()
    facts = w.distractors()
    if any(e.part in ("minatar", "gridworld") for e in experiments):
        if facts is None:
            w.add("## 3. Input masks", "")
        w.images(skipped)
    w.minimality(minimal, facts)
    w.rescale()
    path = atomic_write_text(cfg.out / "report.md", "\n".join(w.lines).rstrip() + "\n")
    log(f"report: {path}")
    return path
