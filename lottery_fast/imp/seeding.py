"""Seeds of every random choice in an IMP run, derived from (run seed, condition, iteration, purpose).

A unit's seeds never depend on what ran before it in the process, so a resumed run draws exactly
what an uninterrupted one would. SHA-256 rather than ``hash()``: Python salts string hashes per process.
"""
from __future__ import annotations

import hashlib

#: seeds stay below 2**31 so int32 consumers (EnvPool, numpy's legacy API) take them as they are
SEED_MODULUS = 2**31 - 1


def derive_seed(run_seed: int, condition: str, iteration: int, purpose: str) -> int:
    key = f"lottery_fast/imp/{int(run_seed)}/{condition}/{int(iteration)}/{purpose}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % SEED_MODULUS
