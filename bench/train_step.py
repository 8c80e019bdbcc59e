"""Adapter training step (forward + backward + optimizer): online encoding vs the feature cache,
with and without gradient checkpointing.

The step is the trainer's own: :func:`metamergen.training.loss.adapter_loss` on an
:class:`~metamergen.training.trainer.AdapterTrainingModel` (frozen UNet, trainable adapters), then backward,
gradient clipping (``max_grad_norm`` 1.0) and AdamW, as ``metamergen.training.train`` runs it, on
synthetic batches built by the datasets' own ``collate``:

* ``online``: ``pixel_values`` (R x R) and ``encoder_pixels`` (448 x 448) as
  :class:`~metamergen.training.data.AdapterTrainingDataset` yields them, so the step runs the VAE
  encoder and two DINOv2 passes before the UNet;
* ``cache``: ``latent_mean``/``latent_std`` and fp16 ``sharp``/``peripheral`` tokens as
  :class:`~metamergen.training.feature_cache.CachedFeatureDataset` yields them, so the step runs only the
  resamplers and the UNet.

Masks and blur levels are drawn like the datasets' (K in {1, 2, 3, 5, 10}, s in {1/16 ... 1}).
Batches start on the host and ``encode_batch`` moves them to the device, as in training. Peak memory is
measured in a separate untimed pass (CUDA: ``torch.cuda.max_memory_allocated``; CPU: process RSS
sampled in a thread with psutil, else the ``ru_maxrss`` delta; ``memory_method`` says which).

Target: the cache at least 1.5x faster per step.

    python bench/train_step.py [--tiny] [--device cuda] [--dtype bfloat16] [--batch-size 8]
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import torch  # noqa: E402

NAME = "train_step"
TARGET = 1.5


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=5, warmup=1)
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default 8; with --tiny 2)")
    p.add_argument(
        "--resolution", type=int, default=None, help="training resolution R in pixels (default: the UNet's native, 512)"
    )
    p.add_argument(
        "--checkpointing",
        choices=["both", "off", "on"],
        default="both",
        help="gradient checkpointing cases to run (default both)",
    )
    return p


def synthetic_batches(comp: bl.Components, batch_size: int, resolution: int, seed: int) -> dict[str, dict[str, Any]]:
    """One online and one cached batch, shaped exactly as the two datasets' samples, through ``collate``."""
    from metamergen.foveation.fovea import random_patch_mask
    from metamergen.training.data import collate

    g = torch.Generator().manual_seed(seed)
    grid = comp.encoder_resolution // int(comp.image_encoder.config.patch_size)
    s, d, t = comp.encoder_resolution, int(comp.image_encoder.config.hidden_size), grid * grid
    h = resolution // comp.vae_scale_factor
    online, cached = [], []
    for i in range(batch_size):
        k = bl.PAPER_FIXATION_COUNTS[int(torch.randint(len(bl.PAPER_FIXATION_COUNTS), (1,), generator=g))]
        blur = bl.PAPER_BLUR_LEVELS[int(torch.randint(len(bl.PAPER_BLUR_LEVELS), (1,), generator=g))]
        common = {
            "foveal_mask": random_patch_mask(k, grid, generator=g).ravel(),
            "blur": blur,
            "index": i,
            "skipped": [],
        }
        online.append(
            {
                "pixel_values": torch.rand(3, resolution, resolution, generator=g) * 2 - 1,
                "encoder_pixels": torch.randn(3, s, s, generator=g),
                **common,
            }
        )
        cached.append(
            {
                "latent_mean": torch.randn(4, h, h, generator=g).half(),
                "latent_std": (torch.rand(4, h, h, generator=g) * 0.1).half(),
                "sharp": torch.randn(t, d, generator=g).half(),
                "peripheral": torch.randn(t, d, generator=g).half(),
                **common,
            }
        )
    return {"online": collate(online), "cache": collate(cached)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    if args.batch_size is None:
        args.batch_size = 2 if args.tiny else 8
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params, compute_snr

    from metamergen.training.config import TrainConfig
    from metamergen.training.loss import adapter_loss, encode_batch
    from metamergen.training.trainer import AdapterTrainingModel, build_optimizer

    bl.log(f"[{NAME}] building the {'tiny' if args.tiny else 'SD1.5-size'} training model on {device} ({args.dtype})")
    comp = bl.build_components(args.tiny, device, dtype, seed=args.seed)
    resolution = args.resolution or comp.resolution
    pipe = comp.pipeline()
    params = pipe.prepare_for_adapter_training()
    if dtype != torch.float32:
        cast_training_params(pipe.adapters, dtype=torch.float32)  # as the trainer: trainable weights in fp32
    model = AdapterTrainingModel(pipe.unet, pipe.adapters)
    cfg = TrainConfig()
    cfg.data.resolution = resolution
    cfg.optim.batch_size = args.batch_size
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = build_optimizer(params, cfg.optim)
    with torch.no_grad():
        empty_text = pipe.encode_prompt([""], device)
    batches = synthetic_batches(comp, args.batch_size, resolution, args.seed)
    micro = itertools.count()

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)  # accelerate's mixed precision does the same

    def step(source: str) -> None:
        g = torch.Generator(device).manual_seed(next(micro))
        with autocast():
            encoded = encode_batch(pipe, batches[source], generator=g, dtype=dtype)
            loss = adapter_loss(
                model, noise_scheduler, encoded, empty_text, cfg.optim, generator=g, compute_snr=compute_snr
            )
        loss.backward()
        if cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def checkpointing(on: bool):
        return pipe.unet.enable_gradient_checkpointing if on else pipe.unet.disable_gradient_checkpointing

    ckpt = {"both": (False, True), "off": (False,), "on": (True,)}[args.checkpointing]
    cases, before = {}, {}
    for on in ckpt:
        for source in ("online", "cache"):
            name = source + ("+ckpt" if on else "")
            cases[name] = lambda source=source: step(source)
            before[name] = checkpointing(on)

    bl.log(
        f"[{NAME}] batch {args.batch_size}, {resolution} px, {args.warmup} warm-up + {args.repeats} interleaved repeats"
    )
    times = bl.interleaved(cases, repeats=args.repeats, warmup=args.warmup, device=device, before=before, log=bl.log)

    bl.log(f"[{NAME}] peak memory, one untimed step per case")
    peak, method = {}, ""
    for name, fn in cases.items():
        before[name]()
        gc.collect()
        with bl.PeakMemory(device) as pm:
            fn()
        peak[name], method = pm.peak_bytes, pm.method
    pipe.unet.disable_gradient_checkpointing()

    med = {c: bl.median(t) for c, t in times.items()}
    steps_per_s = {c: 1 / med[c] for c in cases}
    samples_per_s = {c: args.batch_size / med[c] for c in cases}
    ratios: dict[str, float] = {}
    targets = {}
    for on in ckpt:
        sfx = "+ckpt" if on else ""
        r = med["online" + sfx] / med["cache" + sfx]
        ratios[f"cache speed-up{sfx}"] = r
        verdict = "n/a (tiny)" if args.tiny else ("PASS" if r >= TARGET else "MISS")
        targets[f"cache{sfx}"] = {
            "metric": "online step time / cache step time",
            "target": f">= {TARGET}",
            "value": r,
            "verdict": verdict,
        }
    if len(ckpt) == 2:
        for source in ("online", "cache"):
            ratios[f"{source} checkpointing slow-down"] = med[source + "+ckpt"] / med[source]
    rows = []
    for c in cases:
        base = c.replace("cache", "online")
        speed = "1.00x" if c == base else bl.fmt_x(med[base] / med[c])
        verdict = "" if c == base else targets["cache" + ("+ckpt" if c.endswith("+ckpt") else "")]["verdict"]
        rows.append(
            [
                c.replace("+ckpt", " + grad ckpt"),
                bl.fmt_ms(med[c]),
                f"{steps_per_s[c]:.3g}",
                f"{samples_per_s[c]:.3g}",
                f"{peak[c] / 2**20:.0f}",
                speed,
                verdict,
            ]
        )
    table = bl.make_table(
        f"Adapter training step, batch {args.batch_size} at {resolution} px ({'tiny' if args.tiny else 'SD1.5 + DINOv2-reg-B/14 @ 448'}, {args.dtype}, {device.type})",
        ["inputs", "ms / step", "steps / s", "samples / s", "peak MiB", "vs online", f"cache >= {TARGET}x"],
        rows,
        [
            "forward + backward + clip + AdamW of metamergen.training's step on collate()-shaped synthetic batches",
            f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up round(s)",
            f"peak memory: {method}",
        ],
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(
            args, resolution=resolution, models=comp.describe(), trainable_parameters=sum(p.numel() for p in params)
        ),
        raw_seconds={f"batch={args.batch_size}": times},
        median_seconds={f"batch={args.batch_size}": med},
        ratios={f"batch={args.batch_size}": ratios},
        targets=targets,
        steps_per_second=steps_per_s,
        samples_per_second=samples_per_s,
        peak_memory_bytes=peak,
        memory_method=method,
        table=table,
    )


if __name__ == "__main__":
    main()
