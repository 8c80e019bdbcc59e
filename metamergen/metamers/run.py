"""A model-metamers run: images x layers -> metamers, a manifest, the null test and recognition, resumably.

The output folder::

    OUT/run.json                    the settings (a rerun with other settings is refused)
    OUT/metamers/<image id>/<layer>.png
    OUT/checkpoints/<image id>/<layer>.pt   plenoptic's save of each synthesis (resume from here)
    OUT/manifest.jsonl              one row per (image, layer): files, steps, final loss, recipe, seed;
                                    ``image_id``, ``path`` and ``scene`` (the original) as in a study's
                                    manifest, so ``metamergen score OUT/manifest.jsonl`` scores the
                                    metamers against their originals with the scene metamers' metrics
    OUT/recognition.csv             the generating model's accuracy per layer (95 % bootstrap interval)
    OUT/null_test.csv               with null images: Spearman, Pearson, dB SNR, null maxima, passed
    OUT/summary.json                per layer: mean loss, null-test passes, recognition

Every synthesis is saved every ``save_every`` steps (atomically), so an interrupted run started
again continues each metamer where its checkpoint stops and ends with the same images as an
uninterrupted run. Every image starts from the same noise (``seed``), for every layer, as in
Feather et al.'s per-image jobs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from metamergen.metamers.activations import LayerActivations, Normalize, layer_activations
from metamergen.metamers.null import MEASURES, null_distribution, null_test
from metamergen.metamers.recipes import FeatherRecipe, Recipe, recipe_from_dict
from metamergen.metamers.recognition import Classifier, predict, recognition_accuracy
from metamergen.training.config import ConfigError, apply_overrides
from metamergen.utils.images import load_image, to_pil
from metamergen.utils.io import atomic_write

__all__ = ["MetamerRunConfig", "load_images", "run_model_metamers"]

TRANSFORMS: tuple[str, ...] = ("imagenet", "none")


@dataclass(frozen=True)
class MetamerRunConfig:
    """Settings of a run (``configs/metamers_feather.yaml`` holds the paper's; sections in brackets).

    Attributes
    ----------
    recipe
        [recipe] a :func:`~metamergen.metamers.recipe_from_dict` mapping (``name``: feather or adam).
    image_size
        [images] side the images are resized (squashed) to, pixels.
    transform
        [images] the model's input transform: ``imagenet`` (ImageNet mean/std) or ``none``.
    seed, fake_relu, save_every
        [synthesis] noise seed; fake ReLU on the layers (each must be an ``nn.ReLU``); checkpoint period.
    null_pairs, null_seed
        [null_test] pairs of null images (``None``: every ordered pair) and the draw's seed.
    n_boot
        [recognition] bootstrap resamples of the recognition intervals.
    """

    recipe: dict[str, Any] = field(default_factory=lambda: FeatherRecipe().record())
    image_size: int = 224
    transform: str = "imagenet"
    seed: int = 0
    fake_relu: bool = False
    save_every: int = 1000
    null_pairs: int | None = None
    null_seed: int = 0
    n_boot: int = 10000

    _SECTIONS = {
        "images": {"size": "image_size", "transform": "transform"},
        "synthesis": {"seed": "seed", "fake_relu": "fake_relu", "save_every": "save_every"},
        "null_test": {"n_pairs": "null_pairs", "seed": "null_seed"},
        "recognition": {"n_boot": "n_boot"},
    }

    def __post_init__(self) -> None:
        recipe_from_dict(self.recipe)  # refuses an unknown name or setting
        if self.image_size < 8:
            raise ConfigError(f"images.size must be >= 8 pixels, got {self.image_size}.")
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"images.transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}.")
        if self.save_every < 1:
            raise ConfigError(f"synthesis.save_every must be >= 1, got {self.save_every}.")
        if self.null_pairs is not None and self.null_pairs < 1:
            raise ConfigError(f"null_test.n_pairs must be >= 1 or null, got {self.null_pairs}.")
        if self.n_boot < 1:
            raise ConfigError(f"recognition.n_boot must be >= 1, got {self.n_boot}.")

    @property
    def recipe_object(self) -> Recipe:
        """The recipe the run follows."""
        return recipe_from_dict(self.recipe)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetamerRunConfig:
        """From the YAML layout (sections ``recipe``, ``images``, ``synthesis``, ``null_test``, ``recognition``)."""
        unknown = sorted(set(data) - {"recipe", *cls._SECTIONS})
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; valid: recipe, {', '.join(cls._SECTIONS)}.")
        kwargs: dict[str, Any] = {}
        if data.get("recipe") is not None:
            if not isinstance(data["recipe"], dict):
                raise ConfigError("config section 'recipe' must be a mapping (name: feather, step_size: 1.0, ...).")
            kwargs["recipe"] = dict(data["recipe"])
        for section, keys in cls._SECTIONS.items():
            values = data.get(section) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{section}' must be a mapping, got {values!r}.")
            bad = sorted(set(values) - set(keys))
            if bad:
                raise ConfigError(f"unknown key(s) {bad} in section '{section}'; valid: {', '.join(keys)}.")
            kwargs.update({keys[k]: v for k, v in values.items()})
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from e

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> MetamerRunConfig:
        """Read a YAML config and apply ``section.key=value`` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"No config file {path}: give a YAML file such as configs/metamers_feather.yaml.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not a list or a value.")
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what ``run.json`` records)."""
        return dataclasses.asdict(self)


def load_images(paths: Sequence[str | os.PathLike], size: int) -> tuple[list[str], Tensor]:
    """Image files -> ids (file stems) and ``(N, 3, size, size)`` float32 in [0, 1] (bicubic resize, squashed).

    Raises
    ------
    ValueError
        No files, or two files with the same stem (ids must be unique).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images given.")
    ids = [p.stem for p in paths]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"image file names must be unique without their extension (ids), got {dupes} twice.")
    arrays = [np.asarray(load_image(p).resize((size, size), resample=3), dtype=np.float32) / 255.0 for p in paths]
    return ids, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _safe(layer: str) -> str:
    return layer.replace(os.sep, "_").replace("/", "_") or "_"


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _write_text(path, buffer.getvalue())


def _check_settings(out: Path, record: dict[str, Any]) -> None:
    """Refuse an output folder written with other settings (its checkpoints would not fit)."""
    path = out / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != record:
            changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
            raise ValueError(
                f"{out} holds a run with other settings ({', '.join(changed)} differ); resume it with the same "
                "command and config, or pass another --out."
            )
    _write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def run_model_metamers(
    model: nn.Module,
    image_paths: Sequence[str | os.PathLike],
    layers: Sequence[str],
    out: str | os.PathLike,
    *,
    config: MetamerRunConfig | None = None,
    model_name: str = "model",
    null_image_paths: Sequence[str | os.PathLike] = (),
    normalize: Normalize | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Make, save and test one metamer per (image, layer) of ``model``; resumes from ``out``'s checkpoints.

    Parameters
    ----------
    model
        A frozen ``nn.Module`` in eval mode (a classifier: its output labels the images).
    image_paths
        The natural images (ids are their file stems).
    layers
        Module paths (or torchvision node names).
    out
        The output folder (module docstring).
    config
        Settings (default: the Feather recipe at 224 px with ImageNet normalisation).
    model_name
        How records name the model.
    null_image_paths
        Natural images for the null distribution (at least 2; none: no null test).
    normalize
        The model's own input normalisation (e.g. :attr:`PretrainedModel.normalize
        <metamergen.metamers.pretrained.PretrainedModel>`); given, it replaces ``config.transform``
        and ``run.json`` records its mean and std.
    device
        Where the model and the images go.
    log
        Receives one line per finished metamer.

    Returns
    -------
    dict
        The summary also written to ``summary.json``.
    """
    from metamergen.metamers.synthesis import ModelMetamer  # needs plenoptic

    config = MetamerRunConfig() if config is None else config
    recipe = config.recipe_object
    layers = list(layers)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be one or more distinct names, got {layers}.")
    out = Path(out)
    ids, images = load_images(image_paths, config.image_size)
    null_ids, null_images = load_images(null_image_paths, config.image_size) if null_image_paths else ([], None)
    if null_images is not None and len(null_images) < 2:
        raise ValueError("the null distribution needs at least 2 null images.")
    model = model.to(device)
    if normalize is not None:
        transform: Normalize | None = normalize
    else:
        transform = Normalize.imagenet() if config.transform == "imagenet" else None
    members = {
        layer: LayerActivations(
            model, layer, transform=transform, fake_relu=config.fake_relu, name=f"{model_name}:{layer}"
        )
        for layer in layers
    }
    record = {"model": model_name, "layers": layers, "images": ids, "null_images": null_ids, **config.to_dict()}
    if normalize is not None:
        record["transform"] = {"mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist()}
    _check_settings(out, record)
    images = images.to(device)

    rows: list[dict[str, Any]] = []
    metamers: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    for k, image_id in enumerate(ids):
        for layer in layers:
            checkpoint = out / "checkpoints" / image_id / f"{_safe(layer)}.pt"
            synth = ModelMetamer(images[k : k + 1], members[layer], recipe=recipe, seed=config.seed)
            if checkpoint.is_file():
                synth.load(checkpoint, map_location=str(images.device))
            while synth.steps_done < recipe.max_iter:
                synth.synthesize(min(config.save_every, recipe.max_iter - synth.steps_done))
                atomic_write(checkpoint, synth.save)
            metamer = synth.metamer.detach()
            metamers[layer].append(metamer.cpu())
            png = out / "metamers" / image_id / f"{_safe(layer)}.png"
            atomic_write(png, lambda tmp, m=metamer: to_pil(m[0].clamp(0, 1)).save(tmp, format="PNG"))
            loss = float(synth.losses[-1])
            rows.append(
                {
                    "image_id": f"{image_id}/{_safe(layer)}",  # one row per metamer, as `metamergen score` reads rows
                    "path": str(png.relative_to(out)),
                    "scene": str(Path(image_paths[k]).resolve()),  # the original, scored against
                    "scene_id": image_id,  # score's baselines (a flat image, a blurred copy) are per original
                    "source_id": image_id,
                    "layer": layer,
                    "model": model_name,
                    "checkpoint": str(checkpoint.relative_to(out)),
                    "steps": synth.steps_done,
                    "loss": loss,
                    "seed": config.seed,
                    "recipe": config.recipe,
                }
            )
            log(f"{image_id} {layer}: loss {synth.losses[0]:.4g} -> {loss:.4g} after {synth.steps_done} steps")

    stacked = {layer: torch.cat(ms) for layer, ms in metamers.items()}
    classifier = Classifier(model, transform=transform)
    labels = predict(classifier, images)
    recognised = {
        layer: recognition_accuracy(
            classifier, stacked[layer].to(device), labels, model_name=model_name, layer=layer, n_boot=config.n_boot
        )
        for layer in layers
    }
    _write_csv(out / "recognition.csv", [r.to_dict() for r in recognised.values()])

    tests = {}
    if null_images is not None:
        null_rows = []
        for layer, member in members.items():
            null = null_distribution(
                layer_activations(member, null_images.to(device)), n_pairs=config.null_pairs, seed=config.null_seed
            )
            tests[layer] = null_test(
                layer_activations(member, stacked[layer].to(device)), layer_activations(member, images), null
            )
            for image_id, row in zip(ids, tests[layer].rows()):
                null_rows.append({"image_id": image_id, "layer": layer, **row, "n_null_pairs": len(null)})
        _write_csv(out / "null_test.csv", null_rows)

    _write_text(out / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summary = {
        "model": model_name,
        "n_images": len(ids),
        "layers": {
            layer: {
                "mean_loss": float(np.mean([r["loss"] for r in rows if r["layer"] == layer])),
                "recognition": recognised[layer].to_dict(),
                **(
                    {
                        "null_test_passed": int(tests[layer].passed.sum()),
                        "null_maxima": {m: tests[layer].null_maxima[m] for m in MEASURES},
                    }
                    if layer in tests
                    else {}
                ),
            }
            for layer in layers
        },
    }
    summary = _json_ready(summary)
    _write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return summary


def _json_ready(value: Any) -> Any:
    """NaN and infinite floats (an interval of one image, an infinite SNR) as ``None``, recursively."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
