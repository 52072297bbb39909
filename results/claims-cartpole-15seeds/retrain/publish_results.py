"""Write results.csv of a finished IMP run folder whose seeds ran in groups (the same rows, in the same
order, that the engine publishes)."""
import json, sys
from pathlib import Path
from lottery_fast.imp.store import RunFolder
path = Path(sys.argv[1])
cfg = json.loads((path / "config.json").read_text())["experiment"]["imp"]
seeds, its, conds = cfg["seeds"], cfg["iterations"], cfg["conditions"]
folder = RunFolder(path)
done = folder.finished_units(seeds, its, conds)
sp = {s: i for i, s in enumerate(seeds)}; cp = {c: i for i, c in enumerate(conds)}
keys = sorted(done, key=lambda k: (sp[k[0]], k[1], cp[k[2]]))
expected = len(seeds) * (1 + its * len(conds))
assert len(keys) == expected, (len(keys), expected)
folder.write_results([done[k] for k in keys])
print("wrote", folder.results_path, len(keys), "rows")
