"""Choosing and loading the model a render, study or score uses, and how it is recorded.

One function, :func:`load_model`, serves every entry point (``render``, ``generate``, ``score``, the
demo and users' scripts): a saved pipeline folder or hub id, trained adapters assembled with the
frozen base models, or the tiny random test model. It also returns the description and revision
that manifests record, so a study says exactly which model made its images.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamergen import defaults
from metamergen.utils.dtypes import dtype_kwargs

__all__ = [
    "check_local_reference",
    "looks_local",
    "TINY_MODEL",
    "TINY_WARNING",
    "LoadedModel",
    "load_model",
    "torch_dtype",
]

#: How manifests name the tiny random test model.
TINY_MODEL = "tiny-random"

TINY_WARNING = (
    "NOTE: --tiny renders with a tiny, RANDOMLY INITIALISED MetamerGen built offline. Its images are "
    "noise-like: they show that the machinery runs end to end, not what MetamerGen learns. For real "
    "hypotheses pass --model <saved pipeline folder> or --adapters <trained adapters> (SD1.5 and "
    "DINOv2 are then loaded from the hub or local folders)."
)

# a folder inside the hub cache names its commit: .../snapshots/<40 hex digits>/
_SNAPSHOT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class LoadedModel:
    """A loaded pipeline and how it is recorded.

    Attributes
    ----------
    pipe
        The :class:`~metamergen.pipeline.MetamerGenPipeline`, on the requested device.
    description
        ``"tiny-random"``, the ``model`` string, or ``adapters=...;base=...;image_encoder=...``.
    revision
        The hub revision (given, or read from a hub-cache snapshot path), else ``None``.
    """

    pipe: Any
    description: str
    revision: str | None


def torch_dtype(name: str) -> Any:
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` as a torch dtype."""
    import torch

    if name not in _DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose one of {', '.join(_DTYPES)}.")
    return getattr(torch, name)


def _snapshot_revision(path: str | None) -> str | None:
    if not path or not Path(path).exists():
        return None
    match = _SNAPSHOT.search(str(Path(path).expanduser().resolve()))
    return match.group(1) if match else None


def looks_local(ref: str) -> bool:
    """Whether a model reference can only be a local folder, not a hub id (``owner/name``).

    Hub ids have at most one ``/``, no leading ``.``, ``/`` or ``~``, and no backslash; anything
    else (``outputs/run/pipeline``, ``./model``, ``/data/sd15``) is a path.
    """
    ref = str(ref)
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1 or os.path.exists(ref)


def check_local_reference(flag: str, ref: str) -> None:
    """Raise :class:`FileNotFoundError` for a path-like model reference with no folder behind it."""
    path = os.path.expanduser(str(ref))
    if looks_local(ref) and not os.path.isdir(path):
        what = "a file, not a folder" if os.path.exists(path) else "no such folder"
        raise FileNotFoundError(
            f"{flag} {ref}: {what}. Give the folder a saved pipeline or model was written to, or a hub id (owner/name)."
        )


def load_model(
    *,
    model: str | None = None,
    adapters: str | None = None,
    tiny: bool = False,
    base_model: str = defaults.BASE_MODEL,
    image_encoder: str = defaults.IMAGE_ENCODER,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> LoadedModel:
    """Load exactly one of: a saved pipeline (``model``), trained ``adapters`` (with the base
    models), or the ``tiny`` random test model (its images are noise: callers show :data:`TINY_WARNING`).

    Raises
    ------
    ValueError
        None or more than one of ``model``, ``adapters``, ``tiny``; ``revision`` without ``model``;
        an unknown dtype.
    """
    n = sum(bool(x) for x in (tiny, model, adapters))
    if n > 1:
        raise ValueError("give only one of --model, --adapters, --tiny.")
    if n == 0:
        raise ValueError(
            "say which model to use: --model <saved pipeline folder>, --adapters <trained adapters> "
            "(with --base-model/--image-encoder), or --tiny for the offline random test model."
        )
    if revision and not model:
        raise ValueError("--revision applies to --model only.")
    if not tiny:  # a missing local folder is named as such, not reported as a hub/network error
        used = [("--model", model)] if model else [("--adapters", adapters), ("--base-model", base_model)]
        for flag, ref in used + ([] if model else [("--image-encoder", image_encoder)]):
            if ref:
                check_local_reference(flag, ref)
    weights_dtype = torch_dtype(dtype)
    if tiny:
        from metamergen.testing import tiny_pipeline

        loaded = LoadedModel(tiny_pipeline(seed=0), TINY_MODEL, None)
    elif model:
        from metamergen.pipeline import MetamerGenPipeline

        kw = {"revision": revision} if revision else {}
        pipe = MetamerGenPipeline.from_pretrained(model, **dtype_kwargs(weights_dtype), **kw)
        loaded = LoadedModel(pipe, model, revision or _snapshot_revision(model))
    else:
        from metamergen.pipeline import MetamerGenPipeline

        pipe = MetamerGenPipeline.from_base_models(base_model, image_encoder, adapters, torch_dtype=weights_dtype)
        description = f"adapters={adapters};base={base_model};image_encoder={image_encoder}"
        loaded = LoadedModel(pipe, description, _snapshot_revision(adapters))
    loaded.pipe = loaded.pipe.to(device)
    return loaded
