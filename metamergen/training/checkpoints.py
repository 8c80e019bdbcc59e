"""Training checkpoints: accelerate's state saved atomically, with a step counter and a total limit.

A checkpoint folder ``checkpoint-<step>`` holds ``accelerator.save_state`` plus ``train_state.json``
(global step, micro-step and data position). It is written as ``.checkpoint-<step>.tmp`` and renamed,
so a crash never leaves a half-written checkpoint that ``--resume latest`` would pick up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["latest_checkpoint", "save_checkpoint"]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir`` (temporary ones are ignored)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_checkpoint(accelerator: Any, output_dir: Path, state: dict[str, int], total_limit: int | None) -> Path:
    """Save ``accelerator``'s state and ``state`` (a dict with ``global_step``) as ``checkpoint-<step>``.

    Written to a temporary folder, then renamed: never half-written. Keeps the newest
    ``total_limit`` checkpoints (all when None). Every process must call it (it synchronises).
    """
    step = state["global_step"]
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            done = sorted(
                (p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                key=lambda p: int(p.name.split("-")[-1]),
            )
            for old in done[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
