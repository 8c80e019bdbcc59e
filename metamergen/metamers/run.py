"""A model-metamers run: images x layers (or one ensemble) -> metamers, a manifest, the tests, resumably.

The output folder::

    OUT/run.json                    the settings (a rerun with other settings is refused)
    OUT/metamers/<image id>/<layer>.png      (an ensemble run: <image id>/ensemble.png)
    OUT/checkpoints/<image id>/<layer>.pt   plenoptic's save of each synthesis (resume from here)
    OUT/manifest.jsonl              one row per (image, layer): files, steps, final loss, recipe, seed,
                                    and the outcome of the tests (``recognized``, ``null_test_passed``:
                                    :mod:`~metamergen.metamers.measures`); ``image_id``, ``path`` and
                                    ``scene`` (the original) as in a study's manifest, so ``metamergen
                                    score OUT/manifest.jsonl`` scores the metamers against their originals
                                    with the scene metamers' metrics
    OUT/recognition.csv             each generating model's accuracy per layer (95 % bootstrap interval)
    OUT/null_test.csv               with null images: per metamer and member layer, Spearman, Pearson,
                                    dB SNR, null maxima, passed
    OUT/summary.json                per layer: mean loss, null-test passes, recognition

An **ensemble run** (the config's ``ensemble:`` section, :class:`EnsembleConfig`) makes one metamer
per image of several models' layers at once (:class:`~metamergen.metamers.Ensemble`): its manifest
rows name the ensemble as ``model`` and its members (``<model>:<layer>+...``) as ``layer``; a metamer
counts as recognised when every member's model gives it the natural image's label, and passes the
null test when it passes at every member's layer.

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
from metamergen.metamers.ensemble import SCHEDULES, Ensemble
from metamergen.metamers.measures import LOSS, NULL_TEST_PASSED, RECOGNIZED
from metamergen.metamers.null import MEASURES, null_distribution, null_test
from metamergen.metamers.recipes import FeatherRecipe, Recipe, recipe_from_dict
from metamergen.metamers.recognition import Classifier, predict, recognition_from_correct
from metamergen.training.config import ConfigError, apply_overrides
from metamergen.utils.images import load_image, to_pil
from metamergen.utils.io import atomic_write

__all__ = [
    "EnsembleConfig",
    "EnsembleMemberConfig",
    "MetamerRunConfig",
    "load_images",
    "run_ensemble_metamers",
    "run_model_metamers",
]

TRANSFORMS: tuple[str, ...] = ("imagenet", "none")
#: How an ensemble member names its model (one of them): as ``--model``, ``--pretrained`` and ``--tiny`` do.
MEMBER_SOURCES: tuple[str, ...] = ("model", "pretrained", "tiny")
#: File stem of an ensemble run's metamers and checkpoints (its manifest ``layer`` names the members).
ENSEMBLE_STEM = "ensemble"


@dataclass(frozen=True)
class EnsembleMemberConfig:
    """One member of an ensemble run: a model (one of ``model``, ``pretrained``, ``tiny``), its layer, its loss.

    Attributes
    ----------
    layer
        Module path (or torchvision node name) of the member's model.
    model, pretrained, tiny
        ``module:name`` of an ``nn.Module`` or a function returning one; ``source:name`` of a pretrained
        classifier (:func:`~metamergen.metamers.load_pretrained`); or the seed of a tiny random CNN
        (:func:`~metamergen.metamers.tiny_cnn`, tests only).
    transform
        ``imagenet``, ``none``, or ``None``: a pretrained model's own normalisation, else the run's
        ``images.transform``.
    fake_relu
        Fake ReLU on the layer (``None``: the run's ``synthesis.fake_relu``).
    normalize
        Divide the member's distance by its target's norm (Feather's loss; Boehm et al.'s per-member
        normalisation, so that a member with large activations does not drown the others).
    weight
        The member's weight in the loss (``mean`` schedule), > 0.
    """

    layer: str
    model: str | None = None
    pretrained: str | None = None
    tiny: int | None = None
    transform: str | None = None
    fake_relu: bool | None = None
    normalize: bool = True
    weight: float = 1.0

    def __post_init__(self) -> None:
        given = [k for k in MEMBER_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"an ensemble member names its model with exactly one of {', '.join(MEMBER_SOURCES)} "
                f"(module:name, source:name, a tiny CNN's seed), got {given or 'none'} (layer {self.layer!r})."
            )
        if not str(self.layer).strip():
            raise ConfigError("every ensemble member needs a layer (a module path such as layer4.2.relu).")
        if self.transform is not None and self.transform not in TRANSFORMS:
            raise ConfigError(
                f"ensemble member {self.name}: transform must be one of {', '.join(TRANSFORMS)} or null, "
                f"got {self.transform!r}."
            )
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"ensemble member {self.name}: weight must be a number > 0, got {self.weight!r}.")

    @property
    def source(self) -> tuple[str, Any]:
        """``(kind, value)`` of the model: ``("model", "pkg.mod:fn")``, ``("pretrained", "timm:...")`` or ``("tiny", seed)``."""
        return next((k, getattr(self, k)) for k in MEMBER_SOURCES if getattr(self, k) is not None)

    @property
    def model_name(self) -> str:
        """How records name the member's model: the ``model`` or ``pretrained`` spec, or ``tiny_cnn_<seed>``."""
        return self.model or self.pretrained or f"tiny_cnn_{self.tiny}"

    @property
    def name(self) -> str:
        """``<model name>:<layer>``: the member in records, errors and the manifest's ``layer``."""
        return f"{self.model_name}:{self.layer}"


@dataclass(frozen=True)
class EnsembleConfig:
    """[ensemble] of a run's config: several models' layers matched at once (Boehm et al. 2025).

    Attributes
    ----------
    members
        Two or more :class:`EnsembleMemberConfig`, distinct by name.
    schedule
        ``switch`` (members in turn), ``mean`` (all at every step) or ``random``
        (:class:`~metamergen.metamers.Ensemble`).
    switch_every
        Steps per member before the next (``switch``, ``random``).
    seed
        Seed of the ``random`` schedule.
    name
        How records name the ensemble (its manifest ``model``); default ``ensemble/<schedule>``.
    """

    members: tuple[EnsembleMemberConfig, ...]
    schedule: str = "switch"
    switch_every: int = 5
    seed: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"ensemble.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")
        if isinstance(self.switch_every, bool) or not isinstance(self.switch_every, int) or self.switch_every < 1:
            raise ConfigError(f"ensemble.switch_every must be a whole number >= 1, got {self.switch_every!r}.")
        if len(self.members) < 2:
            raise ConfigError(
                f"ensemble.members needs two or more members, got {len(self.members)}; one model's layers are a "
                "single-model run (--model, --pretrained or --tiny with --layers)."
            )
        names = [m.name for m in self.members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"ensemble.members lists {dupes} twice.")

    @property
    def run_name(self) -> str:
        """The ensemble's name in records: ``name``, or ``ensemble/<schedule>``."""
        return self.name or f"ensemble/{self.schedule}"

    @property
    def target(self) -> str:
        """The manifest's ``layer`` of its metamers: the members' names joined by ``+``."""
        return "+".join(m.name for m in self.members)

    @classmethod
    def from_dict(cls, data: Any) -> EnsembleConfig:
        """From the YAML ``ensemble:`` mapping; unknown keys and bad values are refused (:class:`ConfigError`)."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"config section 'ensemble' must be a mapping (members: [...], schedule: ...), got {data!r}."
            )
        keys = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(data) - keys)
        if bad:
            raise ConfigError(f"unknown key(s) {bad} in section 'ensemble'; valid: {', '.join(sorted(keys))}.")
        members = data.get("members")
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise ConfigError(
                "ensemble.members must be a list of mappings, e.g. [{pretrained: torchvision:resnet50, layer: layer4}, ...]."
            )
        member_keys = {f.name for f in dataclasses.fields(EnsembleMemberConfig)}
        parsed = []
        for m in members:
            bad = sorted(set(m) - member_keys)
            if bad:
                raise ConfigError(
                    f"unknown key(s) {bad} in an ensemble member; valid: {', '.join(sorted(member_keys))}."
                )
            values = dict(m)
            if "layer" in values and values["layer"] is not None:
                values["layer"] = str(values["layer"])  # YAML reads `layer: 3` as a number
            try:
                parsed.append(EnsembleMemberConfig(**values))
            except TypeError as e:
                raise ConfigError(f"an ensemble member: {e}") from e
        return cls(**{**data, "members": tuple(parsed)})

    def to_dict(self) -> dict[str, Any]:
        """Plain values, every default filled in (what ``run.json`` records)."""
        return dataclasses.asdict(self) | {"members": [dataclasses.asdict(m) for m in self.members]}


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
    ensemble
        [ensemble] an :class:`EnsembleConfig` mapping (every default filled in), or ``None`` for a
        single-model run.
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
    ensemble: dict[str, Any] | None = None

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
        if self.ensemble is not None:
            EnsembleConfig.from_dict(self.ensemble)

    @property
    def recipe_object(self) -> Recipe:
        """The recipe the run follows."""
        return recipe_from_dict(self.recipe)

    @property
    def ensemble_config(self) -> EnsembleConfig | None:
        """The ensemble the run makes metamers of, or ``None`` (a single model's layers)."""
        return None if self.ensemble is None else EnsembleConfig.from_dict(self.ensemble)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetamerRunConfig:
        """From the YAML layout (sections ``recipe``, ``images``, ``synthesis``, ``null_test``, ``recognition``,
        ``ensemble``)."""
        unknown = sorted(set(data) - {"recipe", "ensemble", *cls._SECTIONS})
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {unknown}; valid: recipe, {', '.join(cls._SECTIONS)}, ensemble."
            )
        kwargs: dict[str, Any] = {}
        if data.get("recipe") is not None:
            if not isinstance(data["recipe"], dict):
                raise ConfigError("config section 'recipe' must be a mapping (name: feather, step_size: 1.0, ...).")
            kwargs["recipe"] = dict(data["recipe"])
        if data.get("ensemble") is not None:
            kwargs["ensemble"] = EnsembleConfig.from_dict(data["ensemble"]).to_dict()
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
        """Plain values (what ``run.json`` records; no ``ensemble`` key for a single-model run)."""
        values = dataclasses.asdict(self)
        if values["ensemble"] is None:
            del values["ensemble"]  # a single-model run records what it recorded before ensembles existed
        return values


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


@dataclass(frozen=True)
class _Target:
    """What a run makes one metamer per image of: one layer of the model, or the whole ensemble."""

    name: str  # the manifest's ``layer``
    stem: str  # file name of its metamers and checkpoints
    model: LayerActivations | Ensemble  # what the synthesis matches
    members: tuple[LayerActivations, ...]  # each tested by the null test
    classifiers: dict[str, Classifier]  # the generating model(s), by name: recognition


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
        Settings (default: the Feather recipe at 224 px with ImageNet normalisation); its
        ``ensemble`` section must be empty (:func:`run_ensemble_metamers` makes those).
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
    config = MetamerRunConfig() if config is None else config
    if config.ensemble is not None:
        raise ValueError("the config has an ensemble section: run_ensemble_metamers makes its metamers.")
    layers = list(layers)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be one or more distinct names, got {layers}.")
    model = model.to(device)
    transform = _transform(config, normalize)
    classifier = Classifier(model, transform=transform)
    targets = []
    for layer in layers:
        member = LayerActivations(
            model, layer, transform=transform, fake_relu=config.fake_relu, name=f"{model_name}:{layer}"
        )
        targets.append(_Target(layer, _safe(layer), member, (member,), {model_name: classifier}))
    record: dict[str, Any] = {"model": model_name, "layers": layers, **config.to_dict()}
    if normalize is not None:
        record["transform"] = _normalization(normalize)
    return _run(
        targets,
        image_paths,
        out,
        config=config,
        model_name=model_name,
        record=record,
        null_image_paths=null_image_paths,
        device=device,
        log=log,
    )


def run_ensemble_metamers(
    models: Sequence[nn.Module],
    image_paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    config: MetamerRunConfig,
    null_image_paths: Sequence[str | os.PathLike] = (),
    normalizes: Sequence[Normalize | None] | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Make, save and test one metamer per image of the config's ensemble; resumes as :func:`run_model_metamers`.

    Parameters
    ----------
    models
        One frozen, eval-mode classifier per member of ``config.ensemble_config.members``, in order
        (members naming the same model may share one module).
    image_paths, out, null_image_paths, device, log
        As :func:`run_model_metamers`; the folder has the same layout, with one metamer per image
        (``metamers/<image id>/ensemble.png``).
    config
        Settings with an ``ensemble`` section (:class:`EnsembleConfig`).
    normalizes
        Per member, its model's own input normalisation (a pretrained model's) or ``None``: used
        where the member's ``transform`` is not set, and recorded in ``run.json``.

    Returns
    -------
    dict
        The summary also written to ``summary.json``; its ``recognition`` counts a metamer as
        recognised when every member's model gives it the natural image's label, and
        ``recognition_by_model`` has each model's accuracy.
    """
    ensemble = config.ensemble_config
    if ensemble is None:
        raise ValueError("the config has no ensemble section (ensemble: members: [...]).")
    models = list(models)
    normalizes = [None] * len(models) if normalizes is None else list(normalizes)
    if not len(models) == len(normalizes) == len(ensemble.members):
        raise ValueError(
            f"need one model and one normalisation per ensemble member ({len(ensemble.members)}), "
            f"got {len(models)} and {len(normalizes)}."
        )
    acts, classifiers, transforms = [], {}, []
    for spec, model, own in zip(ensemble.members, models, normalizes):
        model = model.to(device)
        if spec.transform is not None:
            transform = Normalize.imagenet() if spec.transform == "imagenet" else None
        else:
            transform = _transform(config, own)
        fake_relu = config.fake_relu if spec.fake_relu is None else spec.fake_relu
        acts.append(LayerActivations(model, spec.layer, transform=transform, fake_relu=fake_relu, name=spec.name))
        classifiers.setdefault(spec.model_name, Classifier(model, transform=transform))
        transforms.append(_normalization(transform) if isinstance(transform, Normalize) else None)
    joint = Ensemble(
        acts,
        schedule=ensemble.schedule,
        switch_every=ensemble.switch_every,
        weights=[m.weight for m in ensemble.members],
        normalize=[m.normalize for m in ensemble.members],
        seed=ensemble.seed,
    )
    target = _Target(ensemble.target, ENSEMBLE_STEM, joint, tuple(acts), classifiers)
    record = {"model": ensemble.run_name, "layers": [ensemble.target], **config.to_dict(), "transforms": transforms}
    return _run(
        [target],
        image_paths,
        out,
        config=config,
        model_name=ensemble.run_name,
        record=record,
        null_image_paths=null_image_paths,
        device=device,
        log=log,
    )


def _transform(config: MetamerRunConfig, own: Normalize | None) -> Normalize | None:
    """A model's input transform: its own normalisation if it has one, else the config's ``images.transform``."""
    if own is not None:
        return own
    return Normalize.imagenet() if config.transform == "imagenet" else None


def _normalization(normalize: Normalize) -> dict[str, list[float]]:
    return {"mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist()}


def _run(
    targets: Sequence[_Target],
    image_paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    config: MetamerRunConfig,
    model_name: str,
    record: dict[str, Any],
    null_image_paths: Sequence[str | os.PathLike],
    device: str | torch.device,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The run of either kind: synthesis with checkpoints, recognition, null test, manifest, summary."""
    from metamergen.metamers.synthesis import ModelMetamer  # needs plenoptic

    recipe = config.recipe_object
    out = Path(out)
    ids, images = load_images(image_paths, config.image_size)
    null_ids, null_images = load_images(null_image_paths, config.image_size) if null_image_paths else ([], None)
    if null_images is not None and len(null_images) < 2:
        raise ValueError("the null distribution needs at least 2 null images.")
    _check_settings(out, {**record, "images": ids, "null_images": null_ids})
    images = images.to(device)

    rows: list[dict[str, Any]] = []
    metamers: dict[str, list[Tensor]] = {t.name: [] for t in targets}
    for k, image_id in enumerate(ids):
        for t in targets:
            checkpoint = out / "checkpoints" / image_id / f"{t.stem}.pt"
            synth = ModelMetamer(images[k : k + 1], t.model, recipe=recipe, seed=config.seed)
            if checkpoint.is_file():
                synth.load(checkpoint, map_location=str(images.device))
            while synth.steps_done < recipe.max_iter:
                synth.synthesize(min(config.save_every, recipe.max_iter - synth.steps_done))
                atomic_write(checkpoint, synth.save)
            metamer = synth.metamer.detach()
            metamers[t.name].append(metamer.cpu())
            png = out / "metamers" / image_id / f"{t.stem}.png"
            atomic_write(png, lambda tmp, m=metamer: to_pil(m[0].clamp(0, 1)).save(tmp, format="PNG"))
            loss = float(synth.losses[-1])
            rows.append(
                {
                    "image_id": f"{image_id}/{t.stem}",  # one row per metamer, as `metamergen score` reads rows
                    "path": str(png.relative_to(out)),
                    "scene": str(Path(image_paths[k]).resolve()),  # the original, scored against
                    "scene_id": image_id,  # score's baselines (a flat image, a blurred copy) are per original
                    "source_id": image_id,
                    "layer": t.name,
                    "model": model_name,
                    "checkpoint": str(checkpoint.relative_to(out)),
                    "steps": synth.steps_done,
                    LOSS: loss,
                    "seed": config.seed,
                    "recipe": config.recipe,
                }
            )
            log(f"{image_id} {t.name}: loss {synth.losses[0]:.4g} -> {loss:.4g} after {synth.steps_done} steps")
    stacked = {name: torch.cat(ms).to(device) for name, ms in metamers.items()}

    labels = {}  # each generating model's labels of the natural images: what its metamers should get
    recognition_rows, recognised, by_model, correct = [], {}, {}, {}
    for t in targets:
        every = np.ones(len(ids), dtype=bool)
        for name, classifier in t.classifiers.items():
            if name not in labels:
                labels[name] = predict(classifier, images)
            hits = (predict(classifier, stacked[t.name]) == labels[name]).numpy()
            every &= hits
            r = recognition_from_correct(hits, model_name=name, layer=t.name, n_boot=config.n_boot)
            recognition_rows.append(r.to_dict())
            by_model.setdefault(t.name, {})[name] = r.to_dict()
        correct[t.name] = every
        recognised[t.name] = recognition_from_correct(every, model_name=model_name, layer=t.name, n_boot=config.n_boot)
    _write_csv(out / "recognition.csv", recognition_rows)

    passed: dict[str, np.ndarray] = {}
    maxima: dict[str, dict[str, dict[str, float]]] = {}
    if null_images is not None:
        null_rows = []
        for t in targets:
            passed[t.name] = np.ones(len(ids), dtype=bool)
            for member in t.members:
                null = null_distribution(
                    layer_activations(member, null_images.to(device)), n_pairs=config.null_pairs, seed=config.null_seed
                )
                test = null_test(layer_activations(member, stacked[t.name]), layer_activations(member, images), null)
                passed[t.name] &= test.passed
                maxima.setdefault(t.name, {})[member.name] = {m: test.null_maxima[m] for m in MEASURES}
                for image_id, row in zip(ids, test.rows()):
                    null_rows.append(
                        {"image_id": image_id, "layer": t.name, "member": member.name, **row, "n_null_pairs": len(null)}
                    )
        _write_csv(out / "null_test.csv", null_rows)

    index = {name: i for i, name in enumerate(ids)}
    for row in rows:  # the tests' outcome per metamer, for `metamergen score` and `report` to carry along
        i = index[row["source_id"]]
        row[RECOGNIZED] = int(correct[row["layer"]][i])
        if row["layer"] in passed:
            row[NULL_TEST_PASSED] = int(passed[row["layer"]][i])
    _write_text(out / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summary = {
        "model": model_name,
        "n_images": len(ids),
        "layers": {
            t.name: {
                "mean_loss": float(np.mean([r[LOSS] for r in rows if r["layer"] == t.name])),
                "recognition": recognised[t.name].to_dict(),
                **({"recognition_by_model": by_model[t.name]} if len(t.classifiers) > 1 else {}),
                **(
                    {"null_test_passed": int(passed[t.name].sum()), "null_maxima": maxima[t.name]}
                    if t.name in passed
                    else {}
                ),
            }
            for t in targets
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
