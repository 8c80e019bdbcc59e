"""``metamergen render``: one scene and one fixation list -> hypotheses, a contact sheet, a JSON record."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from metamergen.commands._common import (
    add_model_arguments,
    add_sampling_arguments,
    check_model_choice,
    check_sampling_arguments,
    load_pipeline_from_args,
)

__all__ = ["add_parser", "parse_fixations", "run"]

HELP = "render scene hypotheses from one image and one fixation list"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``render`` to the command line's subparsers."""
    r = subparsers.add_parser("render", help=HELP, description=HELP + ".")
    r.add_argument("--image", required=True, help="the scene image file")
    r.add_argument(
        "--fixations",
        default="",
        help="'x,y;x,y' in pixels of the image, or a .json file of [[x, y], ...]; empty = periphery only",
    )
    r.add_argument("--out", required=True, help="output folder")
    add_model_arguments(r)
    add_sampling_arguments(r)
    r.add_argument("--num-images", type=int, default=4, help="hypotheses to render (default 4)")
    r.add_argument("--seed", type=int, default=0, help="seed of the first hypothesis; hypothesis i uses seed + i")
    r.set_defaults(func=run)
    return r


def parse_fixations(text: str) -> Any:
    """``"x,y;x,y"`` inline, or a path to a JSON file holding ``[[x, y], ...]`` (image pixels): ``(N, 2)``."""
    import re

    import numpy as np

    if text.strip() == "":
        return np.zeros((0, 2))
    path = Path(text)
    inline = re.fullmatch(r"[\s\d.,;+\-eEnaNAifIF]*", text) is not None  # numbers, nan and inf
    if not inline and not path.is_file():
        raise SystemExit(
            f"error: no fixation file {text} (and it is not an inline list 'x,y;x,y' in image pixels either)."
        )
    if not inline:
        from metamergen.fixations.io import read_fixation_list

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
    if not np.isfinite(arr).all():
        raise SystemExit("error: --fixations holds NaN or infinite coordinates; give finite (x, y) image pixels.")
    return arr


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen render``."""
    import torch

    from metamergen.encoders.dinov2 import canvas_size
    from metamergen.pipeline.record import RECORD_NAME, hypothesis_filename, record_json, render_record
    from metamergen.utils.images import ImageLoadError, SceneSizeError, check_scene_size, load_image
    from metamergen.utils.io import atomic_write
    from metamergen.viz.figures import contact_sheet, draw_scanpath, foveated_input

    check_model_choice(args)
    check_sampling_arguments(args)
    if args.num_images < 1:
        raise SystemExit(f"error: --num-images must be >= 1, got {args.num_images}.")
    try:
        image = load_image(args.image)
        check_scene_size(image.width, image.height, name=str(args.image))  # before the model loads
    except FileNotFoundError:
        raise SystemExit(f"error: no image at {args.image}.") from None
    except (ImageLoadError, SceneSizeError) as err:  # one line saying what to do
        raise SystemExit(f"error: {err}") from None
    from metamergen.fixations.records import Scanpath

    scanpath = Scanpath.from_points(
        parse_fixations(args.fixations),
        width=image.width,
        height=image.height,
        off_image=args.off_image,
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
        path = out_dir / hypothesis_filename(i, args.seed + i)
        atomic_write(path, lambda p, im=im: im.save(p, format="PNG"))
        paths.append(path)
    view = foveated_input(
        image,
        scanpath.xy,
        args.peripheral_blur,
        size=canvas_size(pipe.feature_extractor),
        patch_size=int(pipe.image_encoder.config.patch_size),
    )
    panels = [draw_scanpath(image, scanpath.xy), view, *out.images]
    captions = ["scene + fixations", f"foveal + periphery s={args.peripheral_blur}"] + [
        f"seed {args.seed + i}" for i in range(len(out.images))
    ]
    sheet = out_dir / "sheet.png"
    atomic_write(sheet, lambda p: contact_sheet(panels, captions).save(p, format="PNG"))
    local_model = args.model if args.model and Path(args.model).is_dir() else None
    record = render_record(
        image=str(args.image),
        image_path=os.path.abspath(args.image),  # recorded where --image was relative
        model_path=os.path.abspath(local_model) if local_model else None,
        fixations=scanpath.xy,
        model=model,
        model_revision=revision,
        seed=args.seed,
        num_images=args.num_images,
        steps=args.steps,
        guidance=args.guidance,
        guidance_scale=args.guidance_scale,
        foveal_scale=args.foveal_scale,
        peripheral_scale=args.peripheral_scale,
        peripheral_blur=args.peripheral_blur,
    )
    atomic_write(out_dir / RECORD_NAME, lambda p: Path(p).write_text(record_json(record)))
    print(f"Wrote {len(paths)} hypotheses, sheet.png and render.json to {out_dir}")
    return 0
