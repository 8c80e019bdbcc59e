"""Batched generation: images per second at batch 1 vs batch 8 of *different* fixation lists.

One scene is encoded once (``pipe.encode_scene``; encoding is measured in ``encoding``), then the
same N = max(batch sizes) fixation lists are rendered in calls of ``b`` lists each, one generator
per image. Per-image generators make every image independent of the batch it was rendered in, which
the script checks (``max_abs_diff_vs_first``) after timing. Full pipeline (CFG++, so the UNet sees
2b rows; VAE decode included) at a **small step count** (``--steps``, default 4, for speed).

    python bench/batched.py [--tiny] [--device cuda] [--batch-sizes 1 8] [--steps 4]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

NAME = "batched"


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=3, warmup=1)
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8],
        help="fixation lists per call; the first is the baseline (default 1 8)",
    )
    p.add_argument(
        "--steps", type=int, default=4, help="DDIM steps per image (default 4, for speed; the paper uses 50)"
    )
    p.add_argument("--scene-size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    p.add_argument("--no-decode", action="store_true", help="stop at latents (skip the VAE decode)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    bl.log(f"[{NAME}] building the {'tiny' if args.tiny else 'SD1.5-size'} pipeline on {device} ({args.dtype})")
    comp = bl.build_components(args.tiny, device, dtype, seed=args.seed)
    pipe = comp.pipeline()
    width, height = (64, 48) if args.tiny else args.scene_size
    image = bl.synthetic_scene(width, height, seed=args.seed)
    n = max(args.batch_sizes)
    lists = bl.random_fixation_lists(n, width, height, seed=args.seed)
    output_type = "latent" if args.no_decode else "np"
    outputs: dict[str, Any] = {}

    with torch.inference_mode():
        scene = pipe.encode_scene(image)

        def run(b: int) -> None:
            images = []
            for start in range(0, n, b):
                chunk = lists[start : start + b]
                out = pipe(
                    scene=scene,
                    fixations=chunk,
                    num_inference_steps=args.steps,
                    generator=[torch.Generator().manual_seed(args.seed + i) for i in range(start, start + len(chunk))],
                    output_type=output_type,
                    height=comp.resolution,
                    width=comp.resolution,
                ).images
                images.append(
                    torch.as_tensor(np.asarray(out)) if not isinstance(out, torch.Tensor) else out.float().cpu()
                )
            outputs[f"b={b}"] = torch.cat(images)

        cases = {f"b={b}": (lambda b=b: run(b)) for b in args.batch_sizes}
        bl.log(
            f"[{NAME}] {n} images in calls of {args.batch_sizes} lists, {args.steps} steps, {args.repeats} interleaved repeats"
        )
        times = bl.interleaved(cases, repeats=args.repeats, warmup=args.warmup, device=device, log=bl.log)

    base = f"b={args.batch_sizes[0]}"
    med = {c: bl.median(t) for c, t in times.items()}
    ips = {c: n / med[c] for c in cases}
    ratios = {c: ips[c] / ips[base] for c in cases}
    diffs = {c: float((outputs[c] - outputs[base]).abs().max()) for c in cases}
    rows = [
        [c.split("=")[1], bl.fmt_ms(med[c] / n), f"{ips[c]:.2f}", bl.fmt_x(ratios[c]), f"{diffs[c]:.1e}"] for c in cases
    ]
    table = bl.make_table(
        f"Batched generation, {n} different fixation lists of one scene ({'tiny' if args.tiny else 'SD1.5'}, {comp.resolution} px, {args.dtype}, {device.type})",
        ["lists per call", "ms / image", "images / s", f"speed-up vs {base}", "max abs diff vs " + base],
        rows,
        [
            f"full pipeline at {args.steps} DDIM step(s) (CFG++: UNet batch 2b), {'no decode' if args.no_decode else 'VAE decode included'}, scene encoded once beforehand",
            f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up round(s)",
            "one generator per image: the same seed gives the same image at any batch size (last column)",
        ],
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(
            args,
            images=n,
            scene_size=[width, height],
            output_size=comp.resolution,
            output_type=output_type,
            models=comp.describe(),
        ),
        raw_seconds={"all": times},
        median_seconds={"all": med},
        ratios={"all": ratios},
        images_per_second=ips,
        max_abs_diff_vs_first=diffs,
        table=table,
    )


if __name__ == "__main__":
    main()
