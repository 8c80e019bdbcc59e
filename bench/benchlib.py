"""Shared machinery of the MetamerGen benchmarks (``bench/*.py``).

* building the models: the **real architectures** with random weights (SD1.5 UNet, VAE and text
  encoder from their published config values, DINOv2-with-registers-base at 448 px, paper-shaped
  adapters) or, with ``--tiny``, the tiny components of :mod:`metamergen.testing`;
* timing: cases run interleaved (A, B, C, A, B, C, ...) in one process, after warm-up rounds, with
  the device synchronised around every timed call; the summary is the median of the repeats;
* memory: CUDA peak allocation, or on the CPU the process RSS sampled in a background thread;
* output: a table on stdout and a JSON file (machine, settings, raw times, medians, ratios, table).

Timing needs no trained weights: random weights of the exact shapes cost the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; never try
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: The paper's training / sampling sets (docs/design.md).
PAPER_FIXATION_COUNTS = (1, 2, 3, 5, 10)
PAPER_BLUR_LEVELS = (0.0625, 0.125, 0.25, 0.5, 1.0)


# ----------------------------------------------------------------------------- command line


def base_parser(name: str, description: str, *, repeats: int = 5, warmup: int = 1) -> argparse.ArgumentParser:
    """The options every benchmark shares."""
    p = argparse.ArgumentParser(prog=f"bench/{name}.py", description=description)
    p.add_argument(
        "--tiny", action="store_true", help="tiny random components (seconds on a CPU; a smoke test, not a measurement)"
    )
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="weights and activations (default float32)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help=f"timed repeats per case; the median is reported (default {repeats})",
    )
    p.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed warm-up rounds of every case (default {warmup})"
    )
    p.add_argument("--out", default=f"results/{name}.json", help=f"JSON result file (default results/{name}.json)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice / OMP_NUM_THREADS)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Resolve device and dtype, seed, set threads, silence progress bars."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device.")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0.")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if args.device == "cpu" and dtype == torch.float16:
        warnings.warn(
            "float16 on the CPU is slow or unsupported for some ops; prefer bfloat16 or float32.", stacklevel=2
        )
    torch.manual_seed(args.seed)
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    return torch.device(args.device), dtype


def settings_of(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The run's settings as plain JSON."""
    d = {k: v for k, v in vars(args).items() if k != "out"}
    d.update(extra)
    return d


# ----------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
    }
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_gb=round(prop.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device_name"] = info["cpu"]
    return info


def machine_line(m: Mapping[str, Any]) -> str:
    """One line naming the machine (for tables)."""
    if str(m.get("device", "")).startswith("cuda"):
        return f"{m.get('device_name')} ({m.get('device_memory_gb')} GB), torch {m.get('torch')}, CUDA {m.get('cuda')}"
    return (
        f"CPU only: {m.get('cpu')}, {m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads, "
        f"torch {m.get('torch')}"
    )


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(
    cases: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    before: Mapping[str, Callable[[], Any]] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Time every case ``repeats`` times, interleaved (A, B, C, A, B, C, ...), after ``warmup``
    untimed rounds. ``before[name]()`` runs untimed before each call of that case (e.g. to switch
    attention processors). Returns the raw seconds per case."""
    before = before or {}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(warmup + repeats):
        round_times = {}
        for name, fn in cases.items():
            if name in before:
                before[name]()
            round_times[name] = time_call(fn, device)
            if r >= warmup:
                times[name].append(round_times[name])
        if log is not None:
            phase = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
            log(f"  {phase}: " + ", ".join(f"{n} {fmt_ms(t)} ms" for n, t in round_times.items()))
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {
        "median": median(xs),
        "min": float(min(xs)),
        "max": float(max(xs)),
        "n": len(xs),
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory added while the ``with`` block runs, in bytes (``.peak_bytes``).

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the block (exact for
    torch's allocator). CPU: the process RSS sampled every ``interval`` seconds in a background
    thread (psutil) minus the RSS before the block: tracemalloc does not see torch's allocations,
    and ``ru_maxrss`` is a lifetime high-water mark that shows only growth beyond every earlier
    peak. Without psutil it falls back to the ``ru_maxrss`` delta (``.method`` says which).
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated minus the allocation before the step"
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            import psutil
        except ImportError:
            import resource

            self.method = (
                "resource.getrusage ru_maxrss delta (lifetime high-water mark: growth beyond earlier peaks only)"
            )
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._thread = None
            return self
        trimmed = _malloc_trim()
        self.method = (
            f"psutil RSS sampled every {self.interval * 1e3:g} ms in a thread, peak minus RSS before the step"
            + (" (glibc malloc_trim(0) first, so freed heap memory does not hide the step's own)" if trimmed else "")
        )
        proc = psutil.Process()
        self._base = proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        if self._thread is None:
            import resource

            self.peak_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base)
            return
        import psutil

        self._peak = max(self._peak, psutil.Process().memory_info().rss)
        self._stop.set()
        self._thread.join()
        self.peak_bytes = int(self._peak - self._base)


def _malloc_trim() -> bool:
    """Give freed heap memory back to the OS (glibc only); True when it ran."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- models

#: Stable Diffusion 1.5's UNet (``unet/config.json`` of stable-diffusion-v1-5), written out.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

#: Stable Diffusion 1.5's VAE (``vae/config.json``), written out.
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

#: SD1.5's text encoder (CLIP ViT-L/14 text tower).
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

#: facebook/dinov2-with-registers-base (ViT-B/14, 4 registers). ``image_size`` is the hub's
#: declared 518 (37 x 37 position embeddings, interpolated to 32 x 32 at 448 px on every forward,
#: exactly as with the real weights).
DINOV2_REG_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    num_register_tokens=4,
    layerscale_value=1.0,
    use_swiglu_ffn=False,
    qkv_bias=True,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)

#: diffusers' stock IP-Adapter-Plus for SD1.5 (``ip-adapter-plus_sd15``): CLIP ViT-H/14 penultimate
#: hidden states (257 tokens of 1280) -> Perceiver (768 wide, depth 4, 12 heads of 64) -> 16 tokens.
IP_ADAPTER_PLUS_SD15 = dict(image_tokens=257, embed_dims=1280, hidden_dims=768, heads=12, num_queries=16)


def dinov2_config_check() -> dict[str, Any]:
    """Which values of ``Dinov2WithRegistersConfig()``'s defaults differ from ViT-B/14-reg4 (the
    encoder is built with the latter either way)."""
    from transformers import Dinov2WithRegistersConfig

    default = Dinov2WithRegistersConfig()
    diff = {
        k: {"default": getattr(default, k), "used": v} for k, v in DINOV2_REG_BASE.items() if getattr(default, k) != v
    }
    return {"defaults_match_vit_b14_reg4": not diff, "overridden": diff}


@dataclass
class Components:
    """Everything a pipeline needs, on one device and dtype."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    image_encoder: Any
    processor: Any
    adapters: Any
    scheduler: Any
    encoder_resolution: int
    tiny: bool

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native output side in pixels (512 for SD1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def grid_tokens(self) -> int:
        return (self.encoder_resolution // int(self.image_encoder.config.patch_size)) ** 2

    def pipeline(self):
        from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline

        pipe = MetamerGenPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            image_encoder=self.image_encoder,
            feature_extractor=self.processor,
            adapters=self.adapters,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def describe(self) -> dict[str, Any]:
        def n(m: torch.nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        return {
            "tiny": self.tiny,
            "parameters": {
                "unet": n(self.unet),
                "vae": n(self.vae),
                "text_encoder": n(self.text_encoder),
                "image_encoder": n(self.image_encoder),
                "adapters": n(self.adapters),
            },
            "output_resolution": self.resolution,
            "encoder_resolution": self.encoder_resolution,
            "encoder_tokens": self.grid_tokens,
            "adapter_tokens_per_stream": int(self.adapters.config.num_tokens),
        }


def build_components(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Components:
    """Random-weight components: the real architectures, or the tiny ones with ``tiny=True``."""
    from metamergen import testing
    from metamergen.adapters.model import MetamerGenAdapters
    from metamergen.encoders.dinov2 import dinov2_processor

    torch.manual_seed(seed)
    tokenizer, tiny_text = testing.tiny_text_stack()
    if tiny:
        unet, vae, text_encoder = testing.tiny_unet(), testing.tiny_vae(), tiny_text
        encoder = testing.tiny_image_encoder()
        encoder_resolution = testing.TINY_ENCODER_RESOLUTION
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        unet = UNet2DConditionModel(**SD15_UNET).eval()
        vae = AutoencoderKL(**SD15_VAE).eval()
        # The real CLIP BPE tokenizer needs a download; the byte-level one feeds the same model
        # (77 ids) and tokenising "" costs nothing either way.
        ids = tokenizer.get_vocab()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **SD15_TEXT,
                bos_token_id=ids["<|startoftext|>"],
                eos_token_id=ids["<|endoftext|>"],
                pad_token_id=ids["<|endoftext|>"],
            )
        ).eval()
        encoder = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2_REG_BASE)).eval()
        encoder_resolution = 448
    for m in (unet, vae, text_encoder, encoder):
        m.requires_grad_(False)
        m.to(device=device)
        if m.dtype != dtype:
            m.to(dtype=dtype)
    if tiny:
        adapters = testing.tiny_adapters(unet, image_embed_dim=encoder.config.hidden_size)
    else:
        adapters = MetamerGenAdapters.from_unet(unet, image_embed_dim=encoder.config.hidden_size)  # paper shape
    adapters = adapters.to(device).eval().requires_grad_(False)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=encoder,
        processor=dinov2_processor(encoder_resolution),
        adapters=adapters,
        scheduler=testing.tiny_scheduler(),  # SD1.5's noise schedule settings (DDIM)
        encoder_resolution=encoder_resolution,
        tiny=tiny,
    )


# ----------------------------------------------------------------------------- inputs


def synthetic_scene(width: int, height: int, seed: int = 0):
    """A smooth random RGB scene (coarse noise upsampled: compresses and decodes like a photo)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def random_fixation_lists(
    count: int, width: int, height: int, seed: int = 0, per_list: Sequence[int] = PAPER_FIXATION_COUNTS
) -> list[np.ndarray]:
    """``count`` fixation lists of ``(N, 2)`` image pixels, N cycling through ``per_list``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(per_list[i % len(per_list)])
        out.append(np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], axis=1))
    return out


# ----------------------------------------------------------------------------- output


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def fmt_x(r: float) -> str:
    return f"{r:.2f}x"


def table_markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def make_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> dict[str, Any]:
    return {"title": title, "headers": list(headers), "rows": [[str(c) for c in r] for r in rows], "notes": list(notes)}


def render_table(table: Mapping[str, Any]) -> str:
    parts = [f"### {table['title']}", "", table_markdown(table["headers"], table["rows"])]
    if table.get("notes"):
        parts += [""] + [f"- {n}" for n in table["notes"]]
    return "\n".join(parts)


def finish(
    name: str,
    args: argparse.Namespace,
    device: torch.device,
    *,
    settings: Mapping[str, Any],
    raw_seconds: Mapping[str, Any],
    median_seconds: Mapping[str, Any],
    ratios: Mapping[str, Any],
    table: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Print the table, write the JSON, return the payload."""
    payload = {
        "benchmark": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(device),
        "settings": dict(settings),
        "raw_seconds": raw_seconds,
        "median_seconds": median_seconds,
        "ratios": ratios,
        **extra,
        "table": table,
    }
    print()
    print(render_table(table))
    print()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_json_default))
    print(f"wrote {out}")
    return payload


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
