"""Data loading: samples per second of the training loader vs the training step, at one batch size.

Synthetic photo-like JPEGs (``--image-size``, COCO-like 640 x 480 by default) are written to a
temporary folder and read by :class:`~metamergen.training.data.AdapterTrainingDataset` (random
fixations, K in {1, 2, 3, 5, 10}, blur s in {1/16 ... 1}: decode, squash to the training resolution,
DINOv2 canvas at 448 px, mask) through a ``DataLoader`` with ``collate``, as the trainer builds it,
with ``num_workers`` 0 and ``--workers``. One repeat is one epoch over the folder with a fresh
loader; ``steady`` samples/s leave out the first batch (worker start-up), ``end_to_end`` include it.

The loader's rate is compared with the training step's samples/s at the same batch size (online
encoding and feature cache, no gradient checkpointing), read from ``--train-result`` (a
``bench/train_step.py`` JSON) or measured now. ``headroom`` = loader samples/s / step samples/s;
below 1 the accelerator would wait on the CPU. On a CPU-only machine loader and step share the same
cores, so the comparison only indicates the order of magnitude.

    python bench/data_loading.py [--tiny] [--workers 4] [--batch-size 8] [--train-result results/train_step.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import torch  # noqa: E402

NAME = "data_loading"


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=3, warmup=1)
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers to compare with 0 (default min(4, CPU count))"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (with --tiny 2)")
    p.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="images in the synthetic folder = samples per epoch (default 128; tiny 16)",
    )
    p.add_argument("--image-size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    p.add_argument("--resolution", type=int, default=None, help="training resolution (default 512; tiny 32)")
    p.add_argument(
        "--train-result", default=None, help="train_step JSON to compare with (default: measure the step now)"
    )
    p.add_argument("--no-train", action="store_true", help="measure the loader only")
    return p


def _train_rates(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, float], str]:
    """Training samples/s (online, cache) at this batch size: from a JSON or measured now."""
    if args.train_result:
        found = json.loads(Path(args.train_result).read_text())
        source = f"read from {args.train_result}"
        s = found["settings"]
        if s.get("batch_size") != args.batch_size or bool(s.get("tiny")) != bool(args.tiny):
            source += f" (WARNING: measured at batch {s.get('batch_size')}, tiny={s.get('tiny')})"
    else:
        import train_step

        argv = ["--batch-size", str(args.batch_size), "--checkpointing", "off", "--repeats", str(args.repeats)]
        argv += ["--warmup", str(args.warmup), "--dtype", args.dtype, "--device", args.device, "--seed", str(args.seed)]
        argv += ["--resolution", str(args.resolution), "--out", str(tmp / "train_step.json")]
        if args.tiny:
            argv.append("--tiny")
        if args.threads:
            argv += ["--threads", str(args.threads)]
        bl.log(f"[{NAME}] measuring the training step now (bench/train_step.py {' '.join(argv)})")
        found = train_step.main(argv)
        source = "measured in this run with bench/train_step.py --checkpointing off"
    rates = {k: float(v) for k, v in found["samples_per_second"].items() if k in ("online", "cache")}
    return rates, source


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, _ = bl.setup(args)
    if args.batch_size is None:
        args.batch_size = 2 if args.tiny else 8
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    if args.num_images is None:
        args.num_images = 16 if args.tiny else 128
    if args.resolution is None:
        args.resolution = 32 if args.tiny else 512
    if args.num_images < 2 * args.batch_size:
        raise SystemExit("--num-images must hold at least two batches.")
    from metamergen import testing
    from metamergen.encoders.dinov2 import dinov2_processor
    from metamergen.training.data import AdapterTrainingDataset, TrainingItem, collate, list_images, open_rgb

    width, height = (64, 48) if args.tiny else args.image_size
    encoder_resolution = testing.TINY_ENCODER_RESOLUTION if args.tiny else 448
    configs = [0] if args.workers == 0 else [0, args.workers]
    with tempfile.TemporaryDirectory(prefix="metamergen-bench-") as tmpdir:
        tmp = Path(tmpdir)
        folder = tmp / "images"
        folder.mkdir()
        bl.log(f"[{NAME}] writing {args.num_images} synthetic {width}x{height} JPEGs to {folder}")
        for i in range(args.num_images):
            bl.synthetic_scene(width, height, seed=args.seed + i).save(folder / f"{i:06d}.jpg", quality=90)
        items = [TrainingItem(str(p), functools.partial(open_rgb, p)) for p in list_images(folder)]
        dataset = AdapterTrainingDataset(
            items,
            processor=dinov2_processor(encoder_resolution),
            patch_size=14,
            resolution=args.resolution,
            fixation_counts=bl.PAPER_FIXATION_COUNTS,
            blur_levels=bl.PAPER_BLUR_LEVELS,
            seed=args.seed,
        )

        def epoch(workers: int, r: int) -> dict[str, float]:
            dataset.set_epoch(r)
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=args.batch_size,
                shuffle=True,
                collate_fn=collate,
                num_workers=workers,
                drop_last=True,
                generator=torch.Generator().manual_seed(args.seed + r),
            )
            t0 = time.perf_counter()
            it = iter(loader)
            next(it)
            t1 = time.perf_counter()
            batches = 1 + sum(1 for _ in it)
            t2 = time.perf_counter()
            n = batches * args.batch_size
            return {
                "seconds": t2 - t0,
                "first_batch_seconds": t1 - t0,
                "end_to_end": n / (t2 - t0),
                "steady": (n - args.batch_size) / (t2 - t1),
            }

        raw: dict[str, dict[str, list[float]]] = {f"workers={w}": {} for w in configs}
        bl.log(
            f"[{NAME}] batch {args.batch_size}, workers {configs}, {args.warmup} warm-up + {args.repeats} interleaved epochs"
        )
        for r in range(args.warmup + args.repeats):
            for w in configs:
                res = epoch(w, r)
                if r >= args.warmup:
                    for k, v in res.items():
                        raw[f"workers={w}"].setdefault(k, []).append(v)
                bl.log(
                    f"  {'warm-up' if r < args.warmup else 'epoch'} workers={w}: {res['steady']:.1f} samples/s steady"
                )
        train, train_source = ({}, "not measured (--no-train)") if args.no_train else _train_rates(args, tmp)

    med = {c: {k: bl.median(v) for k, v in d.items()} for c, d in raw.items()}
    loader_rate = {c: m["steady"] for c, m in med.items()}
    ratios: dict[str, dict[str, float]] = {}
    for c, rate in loader_rate.items():
        ratios[c] = {f"headroom vs {src} step": rate / tr for src, tr in train.items()}
        ratios[c]["vs workers=0"] = rate / loader_rate["workers=0"]
    best = max(loader_rate, key=loader_rate.get)
    verdicts = {}
    for src, tr in train.items():
        h = loader_rate[best] / tr
        verdicts[src] = "loader keeps up" if h >= 1 else "accelerator would wait on the loader"
    rows = [
        [
            c.split("=")[1],
            f"{loader_rate[c]:.1f}",
            f"{med[c]['end_to_end']:.1f}",
            bl.fmt_ms(med[c]["first_batch_seconds"]),
            *[f"{train[s]:.2f} ({loader_rate[c] / train[s]:.1f}x)" for s in train],
        ]
        for c in raw
    ]
    notes = [
        f"AdapterTrainingDataset on {args.num_images} synthetic {width}x{height} JPEGs, random fixations, batch {args.batch_size}, "
        f"{args.resolution} px VAE input + {encoder_resolution} px DINOv2 canvas; median of {args.repeats} epochs",
        f"training step rates {train_source}",
        "headroom = loader samples/s / step samples/s; below 1x the accelerator would wait: "
        + ", ".join(f"{s}: {v}" for s, v in verdicts.items()),
        "the feature-cache loader (CachedFeatureDataset, safetensors reads) is not measured here",
    ]
    if device.type == "cpu":
        notes.append("CPU-only run: loader and step share the same cores, so compare orders of magnitude only")
    table = bl.make_table(
        f"Data loading vs training step, batch {args.batch_size} ({'tiny' if args.tiny else 'paper sizes'})",
        [
            "workers",
            "loader samples/s (steady)",
            "end-to-end",
            "first batch ms",
            *[f"{s} step samples/s (headroom)" for s in train],
        ],
        rows,
        notes,
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(
            args, image_size=[width, height], encoder_resolution=encoder_resolution, train_source=train_source
        ),
        raw_seconds={c: {"epoch": d["seconds"], "first_batch": d["first_batch_seconds"]} for c, d in raw.items()},
        median_seconds={c: {"epoch": m["seconds"], "first_batch": m["first_batch_seconds"]} for c, m in med.items()},
        ratios=ratios,
        loader_samples_per_second={c: {"steady": m["steady"], "end_to_end": m["end_to_end"]} for c, m in med.items()},
        train_samples_per_second=train,
        verdicts=verdicts,
        table=table,
    )


if __name__ == "__main__":
    main()
