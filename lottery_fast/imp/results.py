"""results.csv: one tidy row per (seed, condition, iteration), written atomically and read back
without pandas (a list of dicts, or a dict of numpy columns).

Columns: ``seed, condition, iteration, density, metric, best_metric, steps, train_seconds``, then
``density/<layer>`` per prunable layer (kept fraction), then ``extra/<key>`` for the trainer's
extras. Floats are written with ``repr`` so they read back bit for bit; an absent value is empty.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .._atomic import atomic_write_text

RESULTS_FILE = "results.csv"
BASE_COLUMNS = ("seed", "condition", "iteration", "density", "metric", "best_metric", "steps", "train_seconds")
_INT_COLUMNS = {"seed", "iteration", "steps"}
_STR_COLUMNS = {"condition"}
LAYER_PREFIX = "density/"
EXTRA_PREFIX = "extra/"


def flat_row(record: Mapping[str, Any]) -> Dict[str, Any]:
    """A unit record (``layer_density`` and ``extra`` as dicts) as one flat results row."""
    row = {k: record[k] for k in BASE_COLUMNS}
    densities = record["layer_density"]
    order = [n for n in record.get("layers", ()) if n in densities]  # older records: no order kept
    order += [n for n in densities if n not in order]
    row.update({LAYER_PREFIX + name: densities[name] for name in order})
    row.update({EXTRA_PREFIX + key: v for key, v in record["extra"].items()})
    return row


def _columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    layers: Dict[str, None] = {}  # insertion-ordered set: layers keep the model's order
    extras = set()
    for row in rows:
        for key in row:
            if key.startswith(LAYER_PREFIX):
                layers.setdefault(key)
            elif key.startswith(EXTRA_PREFIX):
                extras.add(key)
    return [*BASE_COLUMNS, *layers, *sorted(extras)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_results_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def _parse(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in _STR_COLUMNS:
        return text
    if column in _INT_COLUMNS:
        return int(text)
    return float(text)


def load_results(out_dir: Union[str, Path]) -> List[Dict[str, Any]]:
    """Rows of ``<out_dir>/results.csv`` (or of that file itself) with ints, floats and strings typed."""
    path = Path(out_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"load_results: no results file at {path} (is {out_dir} an IMP run folder?)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"load_results: {path} is empty") from None
        missing = [c for c in BASE_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"load_results: {path} lacks columns {missing}")
        rows = []
        for lineno, cells in enumerate(reader, start=2):
            if len(cells) != len(header):
                raise ValueError(f"load_results: {path} line {lineno} has {len(cells)} cells, expected {len(header)}")
            try:
                rows.append({c: _parse(c, t) for c, t in zip(header, cells)})
            except ValueError as e:
                raise ValueError(f"load_results: {path} line {lineno}: {e}") from None
    return rows


def results_arrays(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Columns of ``rows`` as numpy arrays (strings as object arrays, absent numbers as NaN)."""
    names = list(columns) if columns is not None else _columns(rows)
    out: Dict[str, np.ndarray] = {}
    for c in names:
        values = [row.get(c) for row in rows]
        if c in _STR_COLUMNS:
            out[c] = np.array(values, dtype=object)
        elif c in _INT_COLUMNS and all(v is not None for v in values):
            out[c] = np.array(values, dtype=np.int64)
        else:
            out[c] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return out
