"""Encoding amortisation: render k fixation lists of one scene, with and without scene caching.

* ``cached``: ``scene = pipe.encode_scene(image)`` once, then one ``pipe(scene=scene, fixations=...)``
  call per list: 2 DINOv2 passes whatever k is;
* ``naive``: one ``pipe(image, fixations=...)`` call per list, re-encoding the scene each time:
  2 DINOv2 passes per list.

DINOv2 forward passes are counted with a forward hook on the encoder. The full pipeline runs (text
encoding, resamplers, DDIM with CFG++ so the UNet sees batch 2, VAE decode) at a **small step count**
(``--steps``, default 2) so the benchmark finishes quickly: the encoder's share of the per-image time
is therefore much larger here than at the paper's 50 steps. ``saved_per_image`` (naive minus cached,
per image) is the step-independent figure; the denoising cost per step is in ``unet_step``.

    python bench/encoding.py [--tiny] [--device cuda] [--ks 1 10 50] [--steps 2]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import torch  # noqa: E402

NAME = "encoding"
CASES = ("cached", "naive")


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=3, warmup=1)
    p.add_argument(
        "--ks", type=int, nargs="+", default=None, help="fixation lists per scene (default 1 10 50; with --tiny 1 5 20)"
    )
    p.add_argument(
        "--steps", type=int, default=2, help="DDIM steps per image (default 2, for speed; the paper uses 50)"
    )
    p.add_argument(
        "--scene-size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"), help="scene image size in pixels"
    )
    p.add_argument("--no-decode", action="store_true", help="stop at latents (skip the VAE decode)")
    return p


class PassCounter:
    """Counts encoder forward passes (calls) and the images they carried."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.images = 0
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        x = kwargs.get("pixel_values", args[0] if args else None)
        self.calls += 1
        self.images += int(x.shape[0]) if x is not None else 0

    def reset(self) -> None:
        self.calls = self.images = 0

    def remove(self) -> None:
        self._handle.remove()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    if args.ks is None:
        args.ks = [1, 5, 20] if args.tiny else [1, 10, 50]
    bl.log(f"[{NAME}] building the {'tiny' if args.tiny else 'SD1.5-size'} pipeline on {device} ({args.dtype})")
    comp = bl.build_components(args.tiny, device, dtype, seed=args.seed)
    pipe = comp.pipeline()
    width, height = (64, 48) if args.tiny else args.scene_size
    image = bl.synthetic_scene(width, height, seed=args.seed)
    lists = bl.random_fixation_lists(max(args.ks), width, height, seed=args.seed)
    output_type = "latent" if args.no_decode else "np"
    counter = PassCounter(pipe.image_encoder)
    passes: dict[str, dict[str, int]] = {}
    encode_seconds: dict[str, list[float]] = {}

    def render(k: int, *, scene=None) -> None:
        for i in range(k):
            kw = {"scene": scene} if scene is not None else {"image": image}
            pipe(
                fixations=lists[i],
                num_inference_steps=args.steps,
                generator=[torch.Generator().manual_seed(args.seed + i)],
                output_type=output_type,
                height=comp.resolution,
                width=comp.resolution,
                **kw,
            )

    def cached(k: int) -> None:
        t = bl.time_call(lambda: scenes.__setitem__(0, pipe.encode_scene(image)), device)
        encode_seconds.setdefault(f"k={k}", []).append(t)
        render(k, scene=scenes[0])

    scenes: list[Any] = [None]

    raw, med, ratios, per_image, rows = {}, {}, {}, {}, []
    with torch.inference_mode():
        for r in range(args.warmup):  # warm-up: one list each way
            bl.log(f"[{NAME}] warm-up {r + 1}/{args.warmup}")
            cached(1)
            render(1)
        encode_seconds.clear()
        for k in args.ks:
            key = f"k={k}"
            bl.log(f"[{NAME}] k={k} lists, {args.steps} steps each, {args.repeats} interleaved repeats")
            times = {c: [] for c in CASES}
            for _ in range(args.repeats):
                for case, fn in (("cached", lambda: cached(k)), ("naive", lambda: render(k))):
                    counter.reset()
                    times[case].append(bl.time_call(fn, device))
                    passes.setdefault(key, {})[case] = counter.calls
                bl.log(f"  cached {times['cached'][-1]:.2f} s, naive {times['naive'][-1]:.2f} s")
            raw[key] = times
            med[key] = {c: bl.median(times[c]) for c in CASES}
            per_image[key] = {c: med[key][c] / k for c in CASES}
            per_image[key]["saved_per_image"] = per_image[key]["naive"] - per_image[key]["cached"]
            per_image[key]["encode_scene"] = bl.median(encode_seconds[key])
            ratios[key] = {"naive / cached": med[key]["naive"] / med[key]["cached"]}
            p = passes[key]
            rows.append(
                [
                    k,
                    p["cached"],
                    p["naive"],
                    bl.fmt_ms(per_image[key]["cached"]),
                    bl.fmt_ms(per_image[key]["naive"]),
                    bl.fmt_ms(per_image[key]["saved_per_image"]),
                    bl.fmt_x(ratios[key]["naive / cached"]),
                ]
            )
    counter.remove()
    ks = sorted(args.ks)
    marginal = None
    if len(ks) > 1:  # cost of one more list with a cached scene: slope of the cached total over k
        k0, k1 = ks[0], ks[-1]
        marginal = (med[f"k={k1}"]["cached"] - med[f"k={k0}"]["cached"]) / (k1 - k0)
    notes = [
        f"full pipeline at {args.steps} DDIM step(s) per image (CFG++: UNet batch 2), {'no decode' if args.no_decode else 'VAE decode included'}; "
        f"the paper samples 50 steps, where the encoder's share of the per-image time is far smaller",
        f"median of {args.repeats} interleaved repeats (cached, naive, cached, ...) after {args.warmup} warm-up round(s)",
        "encoder passes counted with a forward hook on DINOv2 (each pass is a batch of one scene)",
    ]
    if marginal is not None:
        notes.append(
            f"cost of one more fixation list with the scene cached: {bl.fmt_ms(marginal)} ms "
            f"(one encode_scene: {bl.fmt_ms(per_image[f'k={ks[-1]}']['encode_scene'])} ms)"
        )
    table = bl.make_table(
        f"Encoding amortisation: k fixation lists of one scene ({'tiny' if args.tiny else 'SD1.5 + DINOv2-reg-B/14 @ 448'}, {args.dtype}, {device.type})",
        [
            "k lists",
            "DINOv2 passes cached",
            "DINOv2 passes naive",
            "cached ms/image",
            "naive ms/image",
            "saved ms/image",
            "naive / cached",
        ],
        rows,
        notes,
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(
            args,
            scene_size=[width, height],
            output_size=comp.resolution,
            output_type=output_type,
            models=comp.describe(),
        ),
        raw_seconds=raw,
        median_seconds=med,
        ratios=ratios,
        per_image_seconds=per_image,
        encoder_passes=passes,
        marginal_seconds_per_extra_list=marginal,
        table=table,
    )


if __name__ == "__main__":
    main()
