"""``metamergen model-metamers``: Feather-style model metamers of a set of images, with their tests."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "run"]

DESCRIPTION = (
    "Optimise one model metamer per (image, layer) of a torch model (Feather et al. 2023 by default), or one per "
    "image of an ensemble of models (a config's ensemble section, Boehm et al. 2025), then test them: recognition "
    "by the generating model(s) with bootstrap intervals and, with --null-images, the null test. Writes "
    "OUT/metamers/, manifest.jsonl, recognition.csv, null_test.csv, summary.json and report/ (the `metamergen "
    "report` page; after `metamergen score` it shows the image metrics too); run the same command again to resume "
    "from OUT/checkpoints/."
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model (one of; none with an ensemble config)")
    model.add_argument(
        "--model", help="module:name of an nn.Module or a function returning one (e.g. mypackage.nets:resnet50)"
    )
    model.add_argument(
        "--pretrained",
        metavar="SOURCE:NAME",
        help="a pretrained classifier with its own normalisation: torchvision:resnet50, timm:<name>, "
        "transformers:<hub id or folder> (weights download on first use)",
    )
    model.add_argument("--tiny", action="store_true", help="a tiny random CNN (tests the machinery; metamers of noise)")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders of them (ids: file stems)")
    p.add_argument(
        "--layers",
        help="comma-separated module paths, e.g. layer1,layer4.2.relu (not with an ensemble: its members name theirs)",
    )
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument(
        "--config",
        help="YAML settings (default: the paper's, as written out in configs/metamers_feather.yaml); a config with "
        "an ensemble section (configs/metamers_ensemble.yaml) makes ensemble metamers of its members instead",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set recipe.n_blocks=2 (repeatable)",
    )
    p.add_argument("--null-images", nargs="+", default=[], help="natural images (files or folders) for the null test")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``model-metamers`` to the command line's subparsers."""
    p = subparsers.add_parser(
        "model-metamers",
        aliases=["metamers"],  # the module's name, which the command line's own checks iterate over
        help="model metamers by optimisation (Feather et al. 2023), with their tests",
        description=DESCRIPTION,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _image_files(items: Sequence[str], flag: str) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SystemExit(f"error: {flag} {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: {flag} {path}: no such file or folder.")
    return files


def _load_model(spec: str, what: str = "--model") -> Any:
    import importlib

    from torch import nn

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"error: {what} takes module:name (e.g. mypackage.nets:build), got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"error: {what} {spec}: cannot import {module_name} ({e}).") from None
    if not hasattr(module, attr):
        raise SystemExit(f"error: {what} {spec}: {module_name} has no attribute {attr!r}.")
    obj = getattr(module, attr)
    if not isinstance(obj, nn.Module) and not callable(obj):
        raise SystemExit(
            f"error: {what} {spec} is a {type(obj).__name__}, not a torch.nn.Module or a function returning one."
        )
    model = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(model, nn.Module):
        raise SystemExit(f"error: {what} {spec} gave a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _load(kind: str, spec: Any, image_size: int, what: str) -> tuple[Any, str, Any]:
    """``(model, name, own normalisation or None)`` of a ``--tiny`` seed, a ``--pretrained`` or a ``--model`` spec.

    ``what`` names the flag or ensemble member in messages.
    """
    if kind == "tiny":
        from metamergen.metamers.toy import tiny_cnn

        print(f"model-metamers: {what} is a tiny random CNN: its metamers test the machinery only.", file=sys.stderr)
        return tiny_cnn(int(spec)), "tiny_cnn" if what == "--tiny" else f"tiny_cnn_{spec}", None
    if kind == "pretrained":
        from metamergen.metamers.pretrained import load_pretrained

        try:
            loaded = load_pretrained(spec)
        except (ImportError, OSError) as err:  # a missing package, no network, an unknown hub id
            raise SystemExit(f"error: {what} {spec}: {' '.join(str(err).split())}") from None
        if loaded.input_size != image_size:
            print(
                f"model-metamers: {loaded.name} was trained at {loaded.input_size} px; images are resized to "
                f"{image_size} px (--set images.size={loaded.input_size} to match).",
                file=sys.stderr,
            )
        return loaded.model, loaded.name, loaded.normalize
    model = _load_model(spec, what)
    import plenoptic as po

    po.remove_grad(model)  # the command owns this model: freeze it and use eval mode
    model.eval()
    return model, spec, None


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen model-metamers``: one model's layers, or the config's ensemble."""
    images = _image_files(args.images, "--images")
    null_images = _image_files(args.null_images, "--null-images") if args.null_images else []
    from metamergen.commands._common import check_device

    check_device(args.device)
    try:
        import plenoptic  # noqa: F401
    except ImportError:
        raise SystemExit("error: model metamers need plenoptic: pip install 'metamergen[metamers]'.") from None
    from metamergen.metamers.run import MetamerRunConfig, run_ensemble_metamers, run_model_metamers
    from metamergen.training.config import apply_overrides

    if args.config:
        config = MetamerRunConfig.from_yaml(args.config, args.overrides)
    else:
        config = MetamerRunConfig.from_dict(apply_overrides({}, args.overrides))
    flags = {"--model": args.model, "--pretrained": args.pretrained, "--tiny": 0 if args.tiny else None}
    given = [flag for flag, value in flags.items() if value is not None]
    ensemble = config.ensemble_config
    if ensemble is not None:
        extra = given + (["--layers"] if args.layers else [])
        if extra:
            raise SystemExit(
                f"error: the config's ensemble section names the models and their layers; drop {', '.join(extra)}."
            )
        loaded: dict[tuple[str, Any], tuple[Any, str, Any]] = {}
        for i, member in enumerate(ensemble.members, start=1):
            if member.source not in loaded:  # members of one model share it
                kind, spec = member.source
                loaded[member.source] = _load(kind, spec, config.image_size, f"ensemble member {i} ({kind})")
        members = [loaded[m.source] for m in ensemble.members]
        summary = run_ensemble_metamers(
            [model for model, _, _ in members],
            images,
            args.out,
            config=config,
            null_image_paths=null_images,
            normalizes=[own for _, _, own in members],
            device=args.device,
            log=_log,
        )
    else:
        if len(given) != 1:
            raise SystemExit(
                "error: give one of --model module:name, --pretrained source:name or --tiny "
                "(or a config with an ensemble section)."
            )
        layers = [name.strip() for name in (args.layers or "").split(",") if name.strip()]
        if not layers:
            raise SystemExit("error: --layers is empty or missing; name module paths such as layer1,layer4.")
        model, name, normalize = _load(given[0].lstrip("-"), flags[given[0]], config.image_size, given[0])
        summary = run_model_metamers(
            model,
            images,
            layers,
            args.out,
            config=config,
            model_name=name,
            null_image_paths=null_images,
            normalize=normalize,
            device=args.device,
            log=_log,
        )
    from metamergen.viz.report import write_report  # the one report page, also for scored runs

    report = write_report(Path(args.out) / "manifest.jsonl", Path(args.out) / "report", n_boot=config.n_boot)
    for layer, s in summary["layers"].items():
        rec = s["recognition"]
        passed = f", null test passed {s['null_test_passed']}/{summary['n_images']}" if "null_test_passed" in s else ""
        print(f"{layer}: mean loss {s['mean_loss']:.4g}, recognised {rec['accuracy']:.2f}{passed}")
    print(report.index)
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``metamergen model-metamers`` as a standalone command."""
    p = argparse.ArgumentParser(prog="metamergen model-metamers", description=DESCRIPTION)
    _add_arguments(p)
    return run(p.parse_args(argv))
