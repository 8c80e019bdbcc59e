"""What :func:`~metamergen.training.trainer.train` may do with a ``run.output_dir`` that already holds a run.

**Starting** (no ``--resume``) in a folder that holds checkpoints or an exported pipeline is
refused unless ``overwrite`` (``--overwrite``): the new run's checkpoints would mix with the old
ones (``--resume latest`` then picks whichever has the highest step) and its export would replace
the old model. With ``overwrite`` the previous run's outputs (:data:`RUN_OUTPUTS`, the
``checkpoint-*`` folders) are deleted first; nothing else in the folder is touched.

**Resuming** compares the config with the ``config.yaml`` of the run the checkpoint belongs to
(the checkpoint's parent folder), key by key after filling in defaults:

* :data:`FREE_ON_RESUME` keys may change: they decide what is logged, checkpointed or validated,
  or when the process stops, never the adapter weights (samples are a pure function of seed,
  epoch and index, so not even ``data.num_workers`` matters). The change is logged.
* :data:`ALLOWED_ON_RESUME` keys may change with ``allow_config_change``
  (``--allow-config-change``): ``optim.max_steps`` to extend (or shorten) a run, and how the same
  computation runs (precision, attention kernel, checkpointing, device, feature cache, skipping
  bad samples). The result then no longer matches an uninterrupted run bit for bit; with a
  learning-rate schedule that decays over ``max_steps`` (linear, cosine, ...) the rest of the
  schedule is recomputed for the new length.
* Every other key is refused: it changes what the checkpoint was trained for (model, data, seed,
  batch, loss), or it is restored *from* the checkpoint, so a new value would silently not apply
  (the learning rate and the Adam settings live in the saved optimizer and scheduler state).
  Start a new ``run.output_dir`` for those.

An accepted change is written to ``config.yaml`` (the config the run now continues with) and
appended to ``config_changes.jsonl`` with the step it took effect at, so the run's history stays
readable.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metamergen.training.checkpoints import latest_checkpoint
from metamergen.training.config import ConfigError, TrainConfig, flat_config
from metamergen.utils.io import atomic_write

logger = logging.getLogger("metamergen.train")

__all__ = [
    "ALLOWED_ON_RESUME",
    "CHANGES_FILE",
    "FREE_ON_RESUME",
    "RUN_OUTPUTS",
    "RunStart",
    "clear_previous_run",
    "config_changes",
    "plan_run",
    "record_config_changes",
]

#: Keys a resumed run may change without a flag: they never affect the adapter weights.
FREE_ON_RESUME: frozenset[str] = frozenset(
    {
        "run.output_dir",  # the folder the run is in (the same folder, spelled relative or absolute)
        "run.log_every",
        "run.report_to",
        "run.checkpointing_steps",
        "run.checkpoints_total_limit",
        "run.validation_steps",
        "run.validation_images",
        "run.validation_fixations",
        "run.validation_num_inference_steps",
        "run.record_sample_ids",
        "run.cache_only",
        "run.stop_after_step",
        "data.num_workers",
    }
)

#: Keys a resumed run may change with ``allow_config_change``: the checkpoint still fits and the
#: new value applies from the resumed step on.
ALLOWED_ON_RESUME: frozenset[str] = frozenset(
    {
        "optim.max_steps",
        "run.mixed_precision",
        "run.attention",
        "run.gradient_checkpointing",
        "run.cpu",
        "data.feature_cache",
        "data.skip_bad_samples",
    }
)

#: What a run writes into its folder besides the ``checkpoint-*`` folders (removed by ``overwrite``).
RUN_OUTPUTS: tuple[str, ...] = (
    "pipeline",
    "adapters",
    "unet_lora",
    "validation",
    "ranks",
    "logs",
    "data_report.json",
    "config.yaml",
    "config_changes.jsonl",
)

#: The run's record of accepted config changes (one JSON object per resume that changed something).
CHANGES_FILE = "config_changes.jsonl"


@dataclass
class RunStart:
    """How a run starts, as :func:`plan_run` decided it.

    Attributes
    ----------
    checkpoint
        The checkpoint to resume from, or ``None`` to start from scratch.
    step
        Its global step (0 from scratch).
    changes
        Accepted config changes, ``{key: (old, new)}`` (resume only).
    clear
        Delete the previous run's outputs first (``overwrite`` of a folder that holds a run).
    """

    checkpoint: Path | None = None
    step: int = 0
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    clear: bool = False


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())


def _previous_run(out: Path) -> list[str]:
    """Names of what in ``out`` holds trained weights: checkpoints, an exported pipeline or adapters."""
    if not out.is_dir():
        return []
    found = sorted(
        (p.name for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda n: int(n.split("-")[-1]),
    )
    found += [f"{name}/" for name in ("pipeline", "adapters") if (out / name).is_dir()]
    return found


def _stored_config(path: Path) -> dict[str, Any]:
    """The flat config a run recorded, with today's defaults for keys it predates.

    Keys this version no longer knows are logged and left out of the comparison.
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"Cannot read the run's {path} ({' '.join(str(err).split())}) to check the config against it: "
            "restore it, or start a new run.output_dir."
        ) from err
    known = TrainConfig().to_dict()
    if not isinstance(data, dict):
        data = {}
    kept = {s: {k: v for k, v in (keys or {}).items() if k in known[s]} for s, keys in data.items() if s in known}
    unknown = sorted(set(flat_config({s: k for s, k in data.items() if isinstance(k, dict)})) - set(flat_config(known)))
    if unknown:
        logger.warning("%s has keys this version does not know (%s); they are not compared.", path, ", ".join(unknown))
    try:
        return flat_config(TrainConfig.from_dict(kept).to_dict())
    except ConfigError as err:
        raise ConfigError(
            f"The run's {path} is not a valid config ({err}): restore it, or start a new run.output_dir."
        ) from err


def config_changes(old: dict[str, Any], new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every flat key whose value differs (in config order)."""
    current = flat_config(new.to_dict())
    return {key: (old.get(key), value) for key, value in current.items() if old.get(key) != value}


def plan_run(
    cfg: TrainConfig, resume: str | None = None, *, allow_config_change: bool = False, overwrite: bool = False
) -> RunStart:
    """Decide how a run starts in ``cfg.run.output_dir`` (module docstring), reading files only.

    Every process can call it: it writes nothing, so the decision is the same everywhere.

    Parameters
    ----------
    cfg
        The run's config.
    resume
        ``"latest"``, a checkpoint folder, or ``None`` to start a new run.
    allow_config_change
        Accept changes of :data:`ALLOWED_ON_RESUME` keys when resuming.
    overwrite
        Start a new run even if the folder holds one (its outputs are then deleted).

    Raises
    ------
    ConfigError
        A folder that holds a run without ``resume`` or ``overwrite``; a config that differs from
        the run's in keys that may not change (the message lists them, old -> new, and says how to
        proceed); ``resume`` and ``overwrite`` together; a ``resume`` folder that is no checkpoint.
    """
    out = Path(cfg.run.output_dir)
    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in run.output_dir and --overwrite deletes it: give only one of them."
        )
    if not resume:
        found = _previous_run(out)
        if found and not overwrite:
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            cont = "--resume latest to continue it, " if any(n.startswith("checkpoint-") for n in found) else ""
            raise ConfigError(
                f"run.output_dir {out} already holds a run ({shown}): pass {cont}--overwrite to delete it and "
                "start again, or choose another run.output_dir."
            )
        return RunStart(clear=bool(found))
    ckpt = latest_checkpoint(out) if resume == "latest" else Path(resume)
    if ckpt is None:
        finished = _previous_run(out)
        if finished:  # an exported run without checkpoints: starting over would replace its model silently
            raise ConfigError(
                f"--resume {resume}: {out} holds a run ({', '.join(finished)}) but no checkpoint to resume from: "
                "pass --overwrite instead of --resume to train it again, or choose another run.output_dir."
            )
        return RunStart()  # nothing to resume: train() says so and starts from scratch
    state_file = ckpt / "train_state.json"
    if not state_file.is_file():
        raise ConfigError(
            f"--resume {resume}: {ckpt} is not a complete checkpoint (no train_state.json); "
            "give 'latest' or a checkpoint-<step> folder of the run."
        )
    step = int(json.loads(state_file.read_text())["global_step"])
    stored = ckpt.parent / "config.yaml"
    if not stored.is_file():
        logger.warning("No config.yaml next to %s: the config cannot be checked against the run's.", ckpt)
        return RunStart(checkpoint=ckpt, step=step)
    changes = config_changes(_stored_config(stored), cfg)
    refused = {k: v for k, v in changes.items() if k not in FREE_ON_RESUME | ALLOWED_ON_RESUME}
    flagged = {k: v for k, v in changes.items() if k in ALLOWED_ON_RESUME}
    if refused:
        also = f" (and {_describe(flagged)}, allowed with --allow-config-change)" if flagged else ""
        raise ConfigError(
            f"Refusing to resume {ckpt} (step {step}) with a config that differs from the run's {stored}: "
            f"{_describe(refused)}{also}. These keys define what the checkpoint was trained for, or are restored "
            "from it (the learning rate and Adam settings), so the change would mix two runs or not apply: start "
            f"a new run.output_dir for it, or resume with the run's values. --allow-config-change accepts only "
            f"{', '.join(sorted(ALLOWED_ON_RESUME))}."
        )
    if flagged and not allow_config_change:
        raise ConfigError(
            f"Refusing to resume {ckpt} (step {step}) with a config that differs from the run's {stored}: "
            f"{_describe(flagged)}. Pass --allow-config-change to continue with the new value(s) (recorded in "
            f"{CHANGES_FILE}), or resume with the run's values, or start a new run.output_dir."
        )
    return RunStart(checkpoint=ckpt, step=step, changes=changes)


def clear_previous_run(out: Path) -> None:
    """Delete what a previous run wrote into ``out``: checkpoints (also unfinished ones) and :data:`RUN_OUTPUTS`."""
    for path in [*out.glob("checkpoint-*"), *out.glob(".checkpoint-*.tmp"), *(out / n for n in RUN_OUTPUTS)]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for name in ("pipeline", "adapters", "unet_lora"):  # unfinished exports (trainer._replace_dir's temporaries)
        shutil.rmtree(out / f".{name}.tmp", ignore_errors=True)


def record_config_changes(out: Path, start: RunStart) -> None:
    """Log the accepted changes and append them to ``out/config_changes.jsonl`` (main process only)."""
    if not start.changes:
        return
    free = {k: v for k, v in start.changes.items() if k in FREE_ON_RESUME}
    flagged = {k: v for k, v in start.changes.items() if k not in FREE_ON_RESUME}
    if free:
        logger.info("Resuming with changed settings that do not affect the weights: %s.", _describe(free))
    if flagged:
        logger.warning(
            "Resuming at step %d with --allow-config-change: %s (recorded in %s).",
            start.step,
            _describe(flagged),
            out / CHANGES_FILE,
        )
    record = {
        "step": start.step,
        "checkpoint": str(start.checkpoint),
        "changes": {k: [old, new] for k, (old, new) in start.changes.items()},
    }
    path = out / CHANGES_FILE
    before = path.read_text() if path.is_file() else ""
    line = json.dumps(record, default=str) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(before + line))
