"""Mixed precision: fp32 trainable adapters inside a bf16 / fp16 UNet, without autocast.

Trainable weights stay fp32 for the optimiser (as in diffusers' training scripts) while the frozen
models run in the run's half-precision dtype; the adapters' forward meets the UNet's dtype itself,
so the training loss, ``pipe(...)`` and the trainer's validation renders need no autocast.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from metamergen.testing import tiny_pipeline
from metamergen.training.config import OptimConfig, TrainConfig
from metamergen.training.loss import EncodedBatch, adapter_loss
from metamergen.training.trainer import AdapterTrainingModel, mixed_precision_dtype

HALF = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def half_pipeline(dtype: torch.dtype, *, foveal_gate: bool = False):
    """The tiny pipeline loaded in ``dtype`` (adapters too), then prepared for adapter training."""
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    if foveal_gate:
        pipe.adapters.register_to_config(foveal_gate=True)
        pipe.adapters.install(pipe.unet)
    pipe.to(dtype=dtype)
    params = pipe.prepare_for_adapter_training()
    return pipe, params


def encoded_batch(dtype: torch.dtype, seed: int = 0) -> EncodedBatch:
    """A micro-batch as :func:`encode_batch` gives it in a ``dtype`` run (tokens and latents in that dtype)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, 20:30] = True
    return EncodedBatch(
        latents=torch.randn(2, 4, 16, 16, generator=g).to(dtype),
        sharp=torch.randn(2, 64, 48, generator=g).to(dtype),
        peripheral=torch.randn(2, 64, 48, generator=g).to(dtype),
        foveal_mask=mask,
    )


def training_loss(pipe, dtype: torch.dtype) -> torch.Tensor:
    model = AdapterTrainingModel(pipe.unet, pipe.adapters)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optim = OptimConfig(foveal_dropout=0.0, peripheral_dropout=0.0)  # both streams carry a gradient
    with torch.no_grad():
        text = pipe.encode_prompt([""], torch.device("cpu"))
    return adapter_loss(model, scheduler, encoded_batch(dtype), text, optim, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", HALF)
def test_prepared_adapters_are_fp32_and_train_in_a_half_precision_unet_without_autocast(dtype: torch.dtype):
    pipe, params = half_pipeline(dtype)
    assert pipe.unet.dtype == dtype and pipe.text_encoder.dtype == dtype
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    # the K/V the UNet's processors use are the adapters' own (fp32) modules, not half copies
    assert pipe.adapters.is_installed(pipe.unet)
    assert not torch.is_autocast_enabled("cpu")

    loss = training_loss(pipe, dtype)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for name, p in pipe.adapters.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    # the same loss as the all-fp32 model, to half precision's accuracy
    reference, _ = half_pipeline(torch.float32)
    with torch.no_grad():
        assert abs(training_loss(reference, torch.float32).item() - loss.item()) < 0.02


@pytest.mark.parametrize("foveal_gate", [False, True], ids=["ungated", "foveal_gate"])
@pytest.mark.parametrize("dtype", HALF)
def test_pipe_renders_after_prepare_for_adapter_training_without_autocast(dtype: torch.dtype, foveal_gate: bool):
    pipe, params = half_pipeline(dtype, foveal_gate=foveal_gate)
    assert all(p.dtype == torch.float32 for p in params)
    seen = []
    hook = pipe.unet.register_forward_hook(lambda m, args, kwargs, out: seen.append(out.sample.dtype), with_kwargs=True)
    scene = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    # the same starting noise for every dtype (noise drawn in bf16 is another draw)
    render = dict(
        num_inference_steps=2,
        output_type="np",
        latents=torch.randn(1, 4, 14, 19, generator=torch.Generator().manual_seed(0)),
    )
    try:
        out = pipe(scene, [[20, 15]], **render)
    finally:
        hook.remove()
    assert seen and set(seen) == {dtype}  # the UNet ran in its own dtype, not upcast or autocast
    assert out.images.shape == (1, 28, 38, 3) and np.isfinite(out.images).all()

    reference, _ = half_pipeline(torch.float32, foveal_gate=foveal_gate)
    expected = reference(scene, [[20, 15]], **render).images
    assert np.abs(out.images - expected).max() < 0.03  # measured: 0.008 (bf16), 0.001 (fp16)


@pytest.mark.parametrize(
    "mixed_precision, dtype", [("no", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_the_run_dtype_follows_mixed_precision(mixed_precision: str, dtype: torch.dtype):
    assert mixed_precision_dtype(mixed_precision) == dtype


def test_an_unknown_mixed_precision_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="'no', 'fp16' or 'bf16'"):
        mixed_precision_dtype("fp8")


@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_validation_renders_in_the_runs_dtype(tmp_path: Path, mixed_precision: str):
    """Validation rendered under ``torch.autocast(device)``, whose dtype is the device's default
    (fp16 on CUDA even in a bf16 run, bf16 on the CPU, where an fp16 run failed); now it renders
    without autocast and every layer of the UNet computes in the run's dtype."""
    from metamergen.training.trainer import _validate

    dtype = mixed_precision_dtype(mixed_precision)
    pipe, _ = half_pipeline(dtype)
    scene = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(scene)
    cfg = TrainConfig()
    cfg.run.validation_images = [str(scene)]
    cfg.run.validation_fixations = [[[20.0, 15.0]]]
    cfg.run.validation_num_inference_steps = 1
    accelerator = SimpleNamespace(
        is_main_process=True,
        device=torch.device("cpu"),
        mixed_precision=mixed_precision,
        trackers=[],
        wait_for_everyone=lambda: None,
    )
    computed, autocast = set(), set()
    hooks = [
        m.register_forward_hook(lambda m, args, out: computed.add(out.dtype))
        for m in pipe.unet.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    hooks.append(pipe.unet.register_forward_hook(lambda m, args, out: autocast.add(torch.is_autocast_enabled("cpu"))))
    try:
        _validate(accelerator, pipe, None, cfg, tmp_path, step=1)
    finally:
        for h in hooks:
            h.remove()
    assert computed == {dtype} and autocast == {False}
    assert (tmp_path / "validation" / "step-0000001" / "00.png").is_file()


@pytest.fixture
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_a_half_precision_run_trains_validates_and_exports_fp32_adapters(
    tmp_path: Path, mixed_precision: str, fresh_accelerate_state
):
    """The trainer end to end on the CPU (an fp16 run failed in its first step before)."""
    from safetensors.torch import load_file

    from metamergen.training.trainer import train

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cfg = TrainConfig.from_yaml(
        Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml",
        [
            f"data.images={images}",
            f"run.output_dir={tmp_path / 'run'}",
            f"run.mixed_precision={mixed_precision}",
            "optim.max_steps=1",
            "run.checkpointing_steps=0",
            "run.record_sample_ids=false",
            "run.validation_steps=1",
            f"run.validation_images=[{images / '0.png'}]",
            "run.validation_num_inference_steps=1",
        ],
    )
    out = train(cfg)
    assert (out / "validation" / "step-0000001" / "00.png").is_file()
    adapters = load_file(out / "adapters" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in adapters.values())
