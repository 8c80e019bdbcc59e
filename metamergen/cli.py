"""The ``metamergen`` command line (also ``python -m metamergen``).

Subcommands:

* ``render``: scene + one fixation list -> scene hypotheses, a contact sheet and a JSON record;
* ``generate``: scenes + scanpaths -> a study's hypotheses and manifest (:mod:`metamergen.study`);
* ``score``: manifest -> similarity table (DreamSim, CLIP, weight-free levels; :mod:`metamergen.scoring`);
* ``convert``: eye-tracking exports (COCO-FreeView, COCO-Search18, CSV) -> canonical scanpath JSONL;
* ``train``: train the adapters (see :mod:`metamergen.trainer`);
* ``report``: score table -> figures, contact sheets and an HTML index (:mod:`metamergen.report`);
* ``analyze``: same/different responses + scores -> the paper's regression analysis (:mod:`metamergen.analysis`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io_utils import atomic_write

__all__ = ["main"]

TINY_WARNING = (
    "NOTE: --tiny renders with a tiny, RANDOMLY INITIALISED MetamerGen built offline. Its images are "
    "noise-like: they show that the machinery runs end to end, not what MetamerGen learns. For real "
    "hypotheses pass --model <saved pipeline folder> or --adapters <trained adapters> (SD1.5 and "
    "DINOv2 are then loaded from the hub or local folders)."
)


def _parse_fixations(text: str) -> np.ndarray:
    """``"x,y;x,y"`` inline, or a path to a JSON file holding ``[[x, y], ...]`` (image pixels)."""
    if text.strip() == "":
        return np.zeros((0, 2))
    path = Path(text)
    if path.suffix == ".json" and path.exists():
        from .data import read_fixation_list

        try:
            return read_fixation_list(path)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    try:
        data = [[float(v) for v in pair.split(",")] for pair in text.split(";") if pair.strip()]
    except ValueError as err:
        raise SystemExit(f"error: could not read --fixations {text!r}: {err}. Use 'x,y;x,y' or a .json file.") from err
    arr = np.asarray(data, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise SystemExit(f"error: --fixations must be a list of (x, y) pairs, got an array of shape {arr.shape}.")
    return arr


# ----------------------------------------------------------------------------- model choice (shared by commands)

_TINY_MODEL = "tiny-random"
_SNAPSHOT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model / --adapters (+ --base-model, --image-encoder) / --tiny``, ``--revision``, ``--device``, ``--dtype``."""
    from .pipeline import DEFAULT_BASE_MODEL, DEFAULT_IMAGE_ENCODER

    model = parser.add_argument_group("model (one of)")
    model.add_argument("--model", help="folder or hub id of a saved MetamerGenPipeline")
    model.add_argument("--adapters", help="trained adapters (folder or repo id), assembled with --base-model and --image-encoder")
    model.add_argument("--tiny", action="store_true", help="tiny random offline model (tests the machinery; images are noise)")
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help=f"Stable Diffusion id or folder (default {DEFAULT_BASE_MODEL})")
    parser.add_argument("--image-encoder", default=DEFAULT_IMAGE_ENCODER, help=f"DINOv2 id or folder (default {DEFAULT_IMAGE_ENCODER})")
    parser.add_argument("--revision", default=None, help="hub revision of --model (recorded; default: the commit of a hub-cache snapshot folder, else unknown)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")


def load_pipeline_from_args(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """Load the pipeline :func:`add_model_arguments` describes.

    Returns
    -------
    pipe, model, model_revision
        The pipeline on ``args.device``, the model description recorded in manifests
        (``"tiny-random"``, the ``--model`` string, or ``adapters=...;base=...;image_encoder=...``)
        and its revision (``None`` if unknown).
    """
    import torch

    from .pipeline import MetamerGenPipeline

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    check_model_choice(args)
    if args.tiny:
        from .testing import tiny_pipeline

        print(TINY_WARNING, file=sys.stderr)
        pipe, model, revision = tiny_pipeline(seed=0), _TINY_MODEL, None
    elif args.model:
        kw = {"revision": args.revision} if args.revision else {}
        pipe = MetamerGenPipeline.from_pretrained(args.model, torch_dtype=dtype, **kw)
        match = _SNAPSHOT.search(str(Path(args.model).expanduser().resolve())) if Path(args.model).exists() else None
        model, revision = args.model, args.revision or (match.group(1) if match else None)
    else:
        pipe = MetamerGenPipeline.from_base_models(args.base_model, args.image_encoder, args.adapters, torch_dtype=dtype)
        model = f"adapters={args.adapters};base={args.base_model};image_encoder={args.image_encoder}"
        match = _SNAPSHOT.search(str(Path(args.adapters).expanduser().resolve())) if Path(args.adapters).exists() else None
        revision = match.group(1) if match else None
    return pipe.to(args.device), model, revision


def check_model_choice(args: argparse.Namespace) -> None:
    """Exit with a clear message unless exactly one of ``--model``, ``--adapters``, ``--tiny`` is given."""
    n = sum(bool(x) for x in (args.tiny, args.model, args.adapters))
    if n > 1:
        raise SystemExit("error: give only one of --model, --adapters, --tiny.")
    if n == 0:
        raise SystemExit(
            "error: say which model to use: --model <saved pipeline folder>, --adapters <trained adapters> "
            "(with --base-model/--image-encoder), or --tiny for the offline random test model."
        )
    if args.revision and not args.model:
        raise SystemExit("error: --revision applies to --model only.")



def _render(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from . import __version__
    from .encoders import canvas_size
    from .figures import contact_sheet, draw_scanpath, foveated_input

    try:
        image = Image.open(args.image).convert("RGB")
    except FileNotFoundError:
        raise SystemExit(f"error: no image at {args.image}.")
    except UnidentifiedImageError:
        raise SystemExit(f"error: {args.image} is not an image file Pillow can read.")
    from .fixations import Scanpath

    scanpath = Scanpath.from_points(
        _parse_fixations(args.fixations), width=image.width, height=image.height, off_image=args.off_image,
        image=str(args.image),
    )
    pipe, model, revision = load_pipeline_from_args(args)
    scene = pipe.encode_scene(image, peripheral_blur=args.peripheral_blur)
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    out = pipe(
        scene=scene,
        fixations=[scanpath],
        num_images_per_prompt=args.num_images,
        num_inference_steps=args.steps,
        guidance=args.guidance,
        guidance_scale=args.guidance_scale,
        foveal_scale=args.foveal_scale,
        peripheral_scale=args.peripheral_scale,
        generator=generators,
    )
    out_dir = Path(args.out)
    paths = []
    for i, im in enumerate(out.images):
        path = out_dir / f"hypothesis_{i:03d}_seed{args.seed + i}.png"
        atomic_write(path, lambda p, im=im: im.save(p, format="PNG"))
        paths.append(path)
    view = foveated_input(
        image, scanpath.xy, args.peripheral_blur,
        size=canvas_size(pipe.feature_extractor), patch_size=int(pipe.image_encoder.config.patch_size),
    )
    panels = [draw_scanpath(image, scanpath.xy), view, *out.images]
    captions = ["scene + fixations", f"foveal + periphery s={args.peripheral_blur}"] + [
        f"seed {args.seed + i}" for i in range(len(out.images))
    ]
    sheet = out_dir / "sheet.png"
    atomic_write(sheet, lambda p: contact_sheet(panels, captions).save(p, format="PNG"))
    record = {
        "image": str(args.image),
        "fixations": scanpath.xy.tolist(),
        "model": model,
        "model_revision": revision,
        "seeds": [args.seed + i for i in range(args.num_images)],
        "steps": args.steps,
        "guidance": args.guidance,
        "guidance_scale": args.guidance_scale,
        "foveal_scale": args.foveal_scale,
        "peripheral_scale": args.peripheral_scale,
        "peripheral_blur": args.peripheral_blur,
        "outputs": [p.name for p in paths],
        "metamergen_version": __version__,
    }
    atomic_write(out_dir / "render.json", lambda p: Path(p).write_text(json.dumps(record, indent=2)))
    print(f"Wrote {len(paths)} hypotheses, sheet.png and render.json to {out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metamergen",
        description="MetamerGen: render what a viewer could believe they saw after a few fixations "
        "(Raina et al., ICLR 2026, arXiv 2601.11675).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from .demo import register_demo_command

    register_demo_command(sub)  # first in --help: the command to try first

    r = sub.add_parser("render", help="render scene hypotheses from one image and one fixation list")
    r.add_argument("--image", required=True, help="the scene image file")
    r.add_argument("--fixations", default="", help="'x,y;x,y' in pixels of the image, or a .json file of [[x, y], ...]; empty = periphery only")
    r.add_argument("--out", required=True, help="output folder")
    add_model_arguments(r)
    r.add_argument("--num-images", type=int, default=4, help="hypotheses to render (default 4)")
    r.add_argument("--seed", type=int, default=0, help="seed of the first hypothesis; hypothesis i uses seed + i")
    r.add_argument("--steps", type=int, default=50, help="DDIM steps (paper: 50)")
    r.add_argument("--guidance", choices=["cfg++", "cfg"], default="cfg++", help="sampler guidance (paper: cfg++)")
    r.add_argument("--guidance-scale", type=float, default=None, help="default 0.6 for cfg++, 7.5 for cfg")
    r.add_argument("--foveal-scale", type=float, default=1.2, help="λ_f (paper: 1.2; 0 = foveal stream off)")
    r.add_argument("--peripheral-scale", type=float, default=0.7, help="λ_p (paper: 0.7; 0 = peripheral stream off)")
    r.add_argument("--peripheral-blur", type=float, default=0.25, help="down/up scale s in (0, 1] (paper figures: 0.25)")
    r.add_argument("--off-image", choices=["drop", "clip", "error"], default="drop", help="fixations outside the image")
    r.set_defaults(func=_render)

    from .analysis import register_analyze_command
    from .converters import register_convert_command
    from .report import register_report_command
    from .scoring import register_score_command
    from .study import register_generate_command

    register_generate_command(sub)
    register_score_command(sub)
    register_report_command(sub)
    register_analyze_command(sub)
    register_convert_command(sub)

    t = sub.add_parser(
        "train",
        help="train the adapters (same as training/train.py; use `accelerate launch -m metamergen train ...` for several GPUs)",
    )
    t.add_argument("--config", required=True, help="YAML config (see configs/)")
    t.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.set_defaults(func=_train)
    return parser


def _train(args: argparse.Namespace) -> int:
    from .train_config import TrainConfig
    from .trainer import train

    train(TrainConfig.from_yaml(args.config, args.overrides), resume=args.resume)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metamergen`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)
