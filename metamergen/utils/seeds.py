"""Seeds derived from names: the one hashing rule behind every seed MetamerGen makes.

A derived seed is a pure function of its parts, stable across runs, processes, platforms and Python
versions (SHA-256 of their JSON, not Python's salted ``hash``), so that a study image, a training
step or a bootstrap cell gets the same randomness whatever else runs around it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["derive_seed", "digest"]


def digest(payload: Any) -> str:
    """Hex SHA-256 of ``payload`` as canonical JSON (sorted keys; NaN and inf refused)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()


def derive_seed(*parts: Any, bits: int = 31) -> int:
    """A ``bits``-bit seed (at most 63) from ``parts``, each turned into its ``str``.

    ``derive_seed(0, "scene-1")`` is the same number in every process; the 31-bit default fits
    every seeding API (numpy, torch, Python's ``random``).
    """
    if not 1 <= bits <= 63:
        raise ValueError(f"bits must be in 1..63, got {bits}.")
    hex_digits = -(-bits // 4)  # the leading ceil(bits / 4) hex digits, masked to ``bits``
    return int(digest([str(p) for p in parts])[:hex_digits], 16) & ((1 << bits) - 1)
