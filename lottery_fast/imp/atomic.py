"""Crash-safe file writes: a temp file in the target's folder, flushed, then ``os.replace``.

A reader (or a resumed run after SIGKILL) sees either the old file or the complete new one, never
a half-written file; the temp file lives in the same folder so the rename stays on one filesystem.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

#: temp files carry this suffix so a resumed run can clear leftovers of a killed one
TMP_SUFFIX = ".lf-tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def atomic_torch_save(path: Path, obj: Mapping[str, Any]) -> None:
    """``torch.save`` of tensors and plain containers, loadable with ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temp files a killed writer left under ``folder`` (only ours, by suffix)."""
    for tmp in Path(folder).rglob(f"*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink()
