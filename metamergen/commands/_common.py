"""The flags several commands share: which model to load, and how to sample (one definition each)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from metamergen import defaults

__all__ = [
    "add_model_arguments",
    "add_sampling_arguments",
    "check_model_choice",
    "load_pipeline_from_args",
    "check_device",
    "check_sampling_arguments",
    "half_precision_on_cpu_said_once",
    "process_state",
]

#: What the command line says, once, about float16 on the CPU (diffusers says it once per component).
HALF_ON_CPU = (
    "warning: --dtype float16 on the CPU: PyTorch runs float16 slowly there and some operations not at all; "
    "use --dtype float32 on the CPU, or --device cuda for float16."
)


class _DropDiffusersHalfOnCpu:
    """A logging filter dropping diffusers' "cannot run with `cpu` device" warning (one per component)."""

    def filter(self, record: Any) -> bool:
        return "cannot run with `cpu` device" not in record.getMessage()


def half_precision_on_cpu_said_once(device: str | None, dtype: str) -> Any:
    """A context for loading a model: float16 on the CPU is said once, in one line, not once per component.

    Parameters
    ----------
    device, dtype
        ``--device`` and ``--dtype`` as given (``device`` ``None``: the command's default).

    Returns
    -------
    contextlib.AbstractContextManager
        Prints :data:`HALF_ON_CPU` to stderr on entry and silences diffusers' repeats inside, when
        ``dtype`` is ``"float16"`` and the device is the CPU; else does nothing.
    """
    import contextlib
    import logging

    if dtype != "float16":
        return contextlib.nullcontext()
    if device is None:  # the command's default: the GPU if there is one
        import torch

        on_cpu = not torch.cuda.is_available()
    else:
        on_cpu = str(device).split(":")[0] == "cpu"
    if not on_cpu:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def said_once() -> Any:
        print(HALF_ON_CPU, file=sys.stderr)
        target = logging.getLogger("diffusers.pipelines.pipeline_utils")
        quiet = _DropDiffusersHalfOnCpu()
        target.addFilter(quiet)
        try:
            yield
        finally:
            target.removeFilter(quiet)

    return said_once()


def process_state(args: argparse.Namespace | None = None) -> Any:
    """accelerate's ``PartialState`` when launched as several processes (``accelerate launch``), else None.

    With ``args``, a bare ``--device cuda`` (or no ``--device``, where a command defaults to "the
    GPU if there is one") becomes this process's own device (``cuda:<local rank>``), as accelerate
    assigns them.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    device = getattr(args, "device", None) if args is not None else None
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)  # cpu=True joins the processes with gloo instead of NCCL
    if args is not None and getattr(args, "device", "cpu") in (None, "cuda"):
        args.device = str(state.device)
    return state


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model / --adapters (+ --base-model, --image-encoder) / --tiny``, ``--revision``, ``--device``, ``--dtype``."""
    model = parser.add_argument_group("model (one of)")
    model.add_argument("--model", help="folder or hub id of a saved MetamerGenPipeline")
    model.add_argument(
        "--adapters", help="trained adapters (folder or repo id), assembled with --base-model and --image-encoder"
    )
    model.add_argument(
        "--tiny", action="store_true", help="tiny random offline model (tests the machinery; images are noise)"
    )
    parser.add_argument(
        "--base-model",
        default=defaults.BASE_MODEL,
        help=f"Stable Diffusion id or folder (default {defaults.BASE_MODEL})",
    )
    parser.add_argument(
        "--image-encoder",
        default=defaults.IMAGE_ENCODER,
        help=f"DINOv2 id or folder (default {defaults.IMAGE_ENCODER})",
    )
    parser.add_argument(
        "--revision",
        default=None,
        help="hub revision of --model (recorded; default: the commit of a hub-cache snapshot folder, else unknown)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")


def check_model_choice(args: argparse.Namespace) -> None:
    """Exit with a one-line message unless exactly one of ``--model``, ``--adapters``, ``--tiny`` is given."""
    n = sum(bool(getattr(args, k, None)) for k in ("tiny", "model", "adapters"))
    if n > 1:
        raise SystemExit("error: give only one of --model, --adapters, --tiny.")
    if n == 0:
        raise SystemExit(
            "error: say which model to use: --model <saved pipeline folder>, --adapters <trained adapters> "
            "(with --base-model/--image-encoder), or --tiny for the offline random test model."
        )
    if getattr(args, "revision", None) and not args.model:
        raise SystemExit("error: --revision applies to --model only.")


def check_device(device: str | None) -> None:
    """Exit with one line if ``device`` names an accelerator torch cannot see (before any model loads)."""
    if not device or device == "cpu":
        return
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise SystemExit(f"error: --device {device}, but {why} (torch {torch.__version__}); use --device cpu.")
    if kind == "cuda" and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {device}, but torch sees {torch.cuda.device_count()} GPU(s).")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"error: --device {device}, but MPS is not available here; use --device cpu.")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """Exit with one line on sampling flags no render could use (before any model loads)."""
    import math

    max_steps = 1000  # SD1.5's (and the demo's) scheduler is trained on 1000 timesteps
    if not 1 <= args.steps <= max_steps:
        raise SystemExit(
            f"error: --steps must be between 1 and {max_steps} (the scheduler's timesteps), got {args.steps}."
        )
    for flag in ("foveal_scale", "peripheral_scale"):
        value = getattr(args, flag)
        if not math.isfinite(value) or value < 0:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be a finite number >= 0, got {value}.")
    if args.peripheral_blur is None:  # the model's own default (a demo model's differs from the paper's)
        from metamergen.demo.run import default_peripheral_blur

        args.peripheral_blur = default_peripheral_blur(getattr(args, "model", None))
    if not (math.isfinite(args.peripheral_blur) and 0 < args.peripheral_blur <= 1):
        raise SystemExit(
            f"error: --peripheral-blur is the down/up scale s in (0, 1] (1 = no blur; paper 0.25), got {args.peripheral_blur}."
        )
    g = args.guidance_scale
    if g is not None:
        if not math.isfinite(g):
            raise SystemExit(f"error: --guidance-scale must be finite, got {g}.")
        if args.guidance == "cfg++" and not 0 <= g <= 1:
            raise SystemExit(
                f"error: --guidance-scale {g} is outside cfg++'s [0, 1] (paper-style λ, default "
                f"{defaults.CFGPP_SCALE}); for SD-style scales such as 7.5 pass --guidance cfg."
            )
        if args.guidance == "cfg" and g < 0:
            raise SystemExit(f"error: --guidance-scale must be >= 0 for cfg, got {g}.")
    check_device(getattr(args, "device", None))


def load_pipeline_from_args(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """Load the model :func:`add_model_arguments` describes: ``(pipe, description, revision)``."""
    from metamergen.loading import TINY_WARNING, load_model

    check_model_choice(args)
    if args.tiny:
        print(TINY_WARNING, file=sys.stderr)
    with half_precision_on_cpu_said_once(args.device, args.dtype):
        loaded = load_model(
            model=args.model,
            adapters=args.adapters,
            tiny=args.tiny,
            base_model=args.base_model,
            image_encoder=args.image_encoder,
            revision=args.revision,
            device=args.device,
            dtype=args.dtype,
        )
    return loaded.pipe, loaded.description, loaded.revision


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps``, ``--guidance``, ``--guidance-scale``, ``--foveal-scale``, ``--peripheral-scale``,
    ``--peripheral-blur`` and ``--off-image``, with the paper's defaults (:mod:`metamergen.defaults`)."""
    p = parser.add_argument_group("sampling")
    p.add_argument(
        "--steps",
        type=int,
        default=defaults.NUM_INFERENCE_STEPS,
        help=f"DDIM steps (paper {defaults.NUM_INFERENCE_STEPS})",
    )
    p.add_argument(
        "--guidance",
        choices=["cfg++", "cfg"],
        default=defaults.GUIDANCE,
        help=f"sampler guidance (paper {defaults.GUIDANCE})",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"default {defaults.CFGPP_SCALE} for cfg++ (range [0, 1]), {defaults.CFG_SCALE} for cfg",
    )
    p.add_argument(
        "--foveal-scale",
        type=float,
        default=defaults.FOVEAL_SCALE,
        help=f"λ_f (paper {defaults.FOVEAL_SCALE}; 0 = foveal stream off)",
    )
    p.add_argument(
        "--peripheral-scale",
        type=float,
        default=defaults.PERIPHERAL_SCALE,
        help=f"λ_p (paper {defaults.PERIPHERAL_SCALE}; 0 = peripheral stream off)",
    )
    p.add_argument(
        "--peripheral-blur",
        type=float,
        default=None,
        help=f"down/up scale s in (0, 1] (default: the paper's {defaults.PERIPHERAL_BLUR}; "
        "for a demo model, the 1/8 it was measured at)",
    )
    p.add_argument(
        "--off-image",
        choices=["drop", "clip", "error"],
        default="drop",
        help="fixations outside the image: drop (default, with a warning count), clip or error",
    )
