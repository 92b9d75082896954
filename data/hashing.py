"""Stable, vectorised id hashing: raw ids -> embedding-table rows.

``mix64`` is the SplitMix64 finaliser (a bijection on 64-bit integers with good avalanche), written
with numpy's wrapping ``uint64`` arithmetic, so the same id maps to the same row on every machine,
in every process and in every release (it is part of the on-disk meaning of ``hashing: hash``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from recscale.configs.schema import Hashing

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray, salt: int = 0) -> np.ndarray:
    """SplitMix64 of ``x + salt * golden`` as ``uint64`` (any integer array in, same shape out)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True)
        if salt:
            z += np.uint64(salt % (1 << 64)) * _GOLDEN
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def map_ids(ids: np.ndarray, hashing: Hashing, num_rows: int) -> np.ndarray:
    """Raw int64 ids -> rows in ``[0, num_rows)`` as int64.

    ``none`` returns the ids unchanged (the caller checks the range), ``modulo`` is ``id % rows``
    (non-negative for negative ids too), ``hash`` is ``mix64(id) % rows``.
    """
    if hashing == "none":
        return ids
    if hashing == "modulo":
        return np.mod(ids, num_rows)
    return (mix64(ids) % np.uint64(num_rows)).astype(np.int64)


def hash_strings(values: list[str] | np.ndarray) -> np.ndarray:
    """A stable 64-bit key of each string (BLAKE2b, 8 bytes), as ``uint64``; Python's ``hash`` is salted."""
    out = np.empty(len(values), dtype=np.uint64)
    for i, text in enumerate(values):
        digest = hashlib.blake2b(str(text).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def uniform01(x: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic uniform in ``(0, 1)`` per integer of ``x`` (float64), independent per ``salt``."""
    bits = mix64(x, salt) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def normal_from_hash(x: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic standard normal per integer of ``x`` (Box-Muller on two hashed uniforms)."""
    u1 = uniform01(x, salt)
    u2 = uniform01(x, salt + 0x5851F42D)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
