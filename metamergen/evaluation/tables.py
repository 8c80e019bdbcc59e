"""Score tables on disk: reading the CSV or Parquet files that ``metamergen score`` writes.

The report and the behavioural analysis read tables through :func:`read_table`, so a table that
one of them accepts the other accepts too, with the same messages for a missing or broken file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TableError", "pandas", "read_table"]


class TableError(ValueError):
    """A table is missing, unreadable or lacks what is asked of it (the message says which)."""


def pandas() -> Any:
    """The pandas module, or a :class:`TableError` saying how to install it."""
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas comes with `datasets`
        raise TableError("Reading score tables needs pandas: pip install pandas (and pyarrow for Parquet).") from err
    return pd


def read_table(path: str | Path) -> Any:
    """Read a CSV, Parquet or JSON Lines table as a DataFrame (by extension: ``.parquet``/``.pq`` is Parquet,
    ``.jsonl`` JSON Lines, e.g. a manifest, with each value's JSON type kept; anything else CSV)."""
    pd = pandas()
    path = Path(path)
    if not path.is_file():
        raise TableError(f"No table at {path}.")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if path.suffix.lower() == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(path)
    except ImportError as err:
        raise TableError(f"Reading {path} needs a Parquet engine: pip install pyarrow.") from err
    except Exception as err:  # pandas raises many types for malformed files
        raise TableError(f"Could not read the table {path}: {err}") from err
