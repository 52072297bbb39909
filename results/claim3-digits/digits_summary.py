"""Digits IMP run: test accuracy per condition and round (mean over seeds), and the input mask's kept
share on the border ring vs the interior of the 8x8 image (ticket, mean over seeds)."""
import csv, sys
from collections import defaultdict
import numpy as np
from lottery_fast.imp import load_mask_history

run, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(f"{run}/results.csv")))
seeds = sorted({int(r["seed"]) for r in rows})
acc = defaultdict(list)
dens = {}
for r in rows:
    acc[(int(r["iteration"]), r["condition"])].append(float(r["metric"]))
    if r["condition"] == "mask/weights":
        dens[int(r["iteration"])] = float(r["density"])
conds = ["mask/weights", "mask/permuted", "permuted/permuted", "random/reinit"]
border = np.zeros((8, 8), bool); border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
lines = ["| round | weights left | " + " | ".join(conds) + " | ticket input weights kept: border ring (28 px) | interior (36 px) | border px with none left | interior px with none left |",
         "|---|---|" + "---|" * len(conds) + "---|---|---|---|"]
hist = {s: load_mask_history(run, s) for s in seeds}
table = []
for it in sorted(dens):
    b, i, bz, iz = [], [], [], []
    for s in seeds:
        m = hist[s][it]["fc1"].float()  # [hidden, 64]
        per_px = m.mean(0).reshape(8, 8).numpy()
        b.append(per_px[border].mean()); i.append(per_px[~border].mean())
        bz.append((per_px[border] == 0).sum()); iz.append((per_px[~border] == 0).sum())
    cells = " | ".join(f"{np.mean(acc[(it, c)]):.3f}" if acc.get((it, c)) else "" for c in conds)
    lines.append(f"| {it} | {100 * dens[it]:.3g}% | {cells} | {100 * np.mean(b):.1f}% | {100 * np.mean(i):.1f}% | {np.mean(bz):.1f} | {np.mean(iz):.1f} |")
    table.append({"iteration": it, "density": dens[it], **{f"acc {c}": np.mean(acc[(it, c)]) if acc.get((it, c)) else "" for c in conds},
                  "border_kept": np.mean(b), "interior_kept": np.mean(i), "border_zero_px": np.mean(bz), "interior_zero_px": np.mean(iz)})
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
