"""Adapter training: config, samples, single- and multi-process runs, resume, bad data, learning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metamergen import MetamerGenPipeline
from metamergen.encoders.dinov2 import dinov2_processor
from metamergen.training.config import TrainConfig
from metamergen.training.data import AdapterTrainingDataset, BadSampleError, TrainingItem, collate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def tiny_config(tmp_path: Path, images: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.from_yaml(TINY, [f"data.images={images}", f"run.output_dir={tmp_path / 'run'}", *overrides])


def adapter_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapters" / "diffusion_pytorch_model.safetensors")


# --------------------------------------------------------------------------- config


def test_config_reads_yaml_and_overrides_and_rejects_typos():
    cfg = TrainConfig.from_yaml(TINY, ["optim.learning_rate=5e-5", "data.blur_levels=[0.5, 1.0]"])
    assert cfg.optim.learning_rate == 5e-5 and cfg.data.blur_levels == [0.5, 1.0] and cfg.model.tiny
    paper = TrainConfig.from_yaml(ROOT / "configs" / "paper_sd15_coco.yaml")
    assert paper.data.fixation_counts == [1, 2, 3, 5, 10]
    assert paper.data.blur_levels == [0.0625, 0.125, 0.25, 0.5, 1.0]
    assert (paper.optim.foveal_dropout, paper.optim.peripheral_dropout) == (0.05, 0.10)
    assert paper.model.encoder_resolution == 448 and paper.data.resolution == 512
    with pytest.raises(ValueError, match="learnin_rate"):
        TrainConfig.from_yaml(TINY, ["optim.learnin_rate=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        TrainConfig.from_yaml(TINY, ["learning_rate"])


# --------------------------------------------------------------------------- samples


def make_dataset(items, **kw) -> AdapterTrainingDataset:
    kw.setdefault("fixation_counts", [1, 2, 3, 5, 10])
    kw.setdefault("blur_levels", [0.0625, 0.125, 0.25, 0.5, 1.0])
    return AdapterTrainingDataset(items, processor=dinov2_processor(112), patch_size=14, resolution=32, **kw)


def test_random_fixation_samples_follow_the_paper_recipe(tmp_path: Path):
    paths = write_images(tmp_path / "img", 6)
    ds = make_dataset([TrainingItem(str(p), lambda p=p: Image.open(p).convert("RGB")) for p in paths], seed=3)
    counts, blurs = set(), set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert s["pixel_values"].shape == (3, 32, 32) and s["encoder_pixels"].shape == (3, 112, 112)
            assert -1 <= s["pixel_values"].min() and s["pixel_values"].max() <= 1
            counts.add(int(s["foveal_mask"].sum()))
            blurs.add(s["blur"])
    assert counts <= {1, 2, 3, 5, 10} and len(counts) >= 3
    assert blurs <= {0.0625, 0.125, 0.25, 0.5, 1.0} and len(blurs) >= 3
    ds.set_epoch(1)
    a, b = ds[2], ds[2]
    assert (
        torch.equal(a["foveal_mask"], b["foveal_mask"]) and a["blur"] == b["blur"]
    )  # pure function of (seed, epoch, index)


def test_scanpath_samples_use_the_viewers_first_fixations(tmp_path: Path):
    from metamergen.fixations.records import Scanpath

    img = Image.new("RGB", (112, 112))
    sp = Scanpath.from_points([[3, 3], [20, 3], [100, 100]], width=112, height=112)
    ds = make_dataset([TrainingItem("x", lambda: img, scanpath=sp)], fixation_counts=[2])
    mask = ds[0]["foveal_mask"].view(8, 8)
    assert mask.nonzero().tolist() == [[0, 0], [0, 1]]


def test_bad_images_are_replaced_and_counted_or_fatal(tmp_path: Path):
    paths = write_images(tmp_path / "img", 3)
    corrupt = tmp_path / "img" / "corrupt.png"
    corrupt.write_bytes(b"this is not a png")
    missing = tmp_path / "img" / "missing.png"
    items = [TrainingItem(str(p), lambda p=p: Image.open(p).convert("RGB")) for p in [corrupt, missing, *paths]]
    batch = collate([make_dataset(items)[i] for i in range(len(items))])
    # index 0 skips both bad items, index 1 the missing one: one pair per replaced draw, named
    bad = "unreadable image"
    assert batch["skipped"] == [(str(corrupt), bad), (str(missing), bad), (str(missing), bad)]
    assert batch["index"].tolist() == [2, 2, 2, 3, 4]
    with pytest.raises(BadSampleError, match="corrupt.png"):
        make_dataset(items, skip_bad_samples=False)[0]


# --------------------------------------------------------------------------- runs


def test_single_process_run_exports_a_loadable_pipeline_and_reports_bad_data(tmp_path: Path):
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    write_images(images, 6)
    (images / "corrupt.jpg").write_bytes(b"\x00garbage")
    out = train(
        tiny_config(
            tmp_path,
            images,
            "run.validation_steps=2",
            f"run.validation_images=[{images / '001.png'}]",
            "run.validation_fixations=[[[5, 5]]]",
            "run.validation_num_inference_steps=2",
        )
    )
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-0000002", "step-0000004"]
    assert (out / "validation" / "step-0000004" / "00.png").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.glob(".*tmp"))
    report = json.loads((out / "data_report.json").read_text())
    # one bad file, named, however often it was drawn
    assert report["steps"] == 4 and report["skipped_samples"] == {"unreadable image": 1}
    assert report["bad_items"] == [{"item": str(images / "corrupt.jpg"), "reason": "unreadable image"}]
    assert report["replaced_draws"] >= 1
    pipe = MetamerGenPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(Image.open(images / "000.png"), [[10, 10]], num_inference_steps=2).images[0]
    assert img.size[0] > 0
    # the adapters really changed, and the exported pipeline holds the trained ones
    from metamergen.testing import tiny_pipeline

    before = tiny_pipeline(seed=0).adapters.state_dict()
    after = adapter_state(out)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert all(torch.equal(pipe.adapters.state_dict()[k], after[k]) for k in after)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_interrupted_and_resumed_run_ends_with_the_same_adapters(tmp_path: Path, accumulation: int):
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    # 3 batches of 2 per epoch: the stop at step 2 falls mid-epoch; with accumulation 2, accelerate
    # also forces an optimizer step at each epoch's end, so steps and batches do not divide evenly
    write_images(images, 7)
    common = ["optim.max_steps=6", f"optim.gradient_accumulation_steps={accumulation}"]
    full = train(tiny_config(tmp_path / "a", images, *common))
    part = tiny_config(tmp_path / "b", images, *common, "run.stop_after_step=2")
    train(part)
    assert not (Path(part.run.output_dir) / "adapters").exists()  # "killed": no export
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train(tiny_config(tmp_path / "b", images, *common), resume="latest")
    a, b = adapter_state(full), adapter_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_data_report_of_a_resumed_run_covers_the_whole_run(tmp_path: Path):
    """Bad items met before an interruption are still reported after the resume, and the draws
    replaced are those of the whole run (the report equals an uninterrupted run's)."""
    from accelerate.state import AcceleratorState

    from metamergen.training.trainer import train

    images = tmp_path / "img"
    write_images(images, 5)
    (images / "bad.png").write_bytes(b"not a png")
    common = ["optim.max_steps=6", "run.checkpointing_steps=2"]
    full = json.loads((train(tiny_config(tmp_path / "a", images, *common)) / "data_report.json").read_text())
    train(tiny_config(tmp_path / "b", images, *common, "run.stop_after_step=4"))
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train(tiny_config(tmp_path / "b", images, *common), resume="latest")
    report = json.loads((resumed / "data_report.json").read_text())
    assert report["bad_items"] == full["bad_items"] == [{"item": str(images / "bad.png"), "reason": "unreadable image"}]
    assert report["replaced_draws"] == full["replaced_draws"] > 1  # drawn in more than one epoch
    assert report["skipped_samples"] == full["skipped_samples"] == {"unreadable image": 1}


def test_multi_process_cpu_training_synchronises(tmp_path: Path):
    images = tmp_path / "img"
    write_images(images, 8)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "training" / "accelerate" / "cpu_2proc.yaml"),
        str(ROOT / "training" / "train.py"),
        "--config",
        str(TINY),
        f"data.images={images}",
        f"run.output_dir={out}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # each epoch (8 images, 2 per step per rank -> 2 steps) is split into disjoint halves
    for epoch in range(2):
        a, b = (set(r["indices"][4 * epoch : 4 * epoch + 4]) for r in ranks)
        assert not a & b and a | b == set(range(8))
    assert ranks[0]["adapter_checksum"] == ranks[1]["adapter_checksum"]
    pipe = MetamerGenPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(Image.open(images / "000.png"), [[5, 5]], num_inference_steps=2, output_type="np").images.shape[0] == 1


def test_scanpath_source_skips_nan_records_and_missing_images(tmp_path: Path):
    from metamergen.fixations.io import DatasetInfo, write_scanpaths
    from metamergen.fixations.records import Scanpath
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    paths = write_images(images, 4)
    records = [Scanpath.from_points([[5, 5], [30, 20]], width=56, height=40, image=p.name, id=p.stem) for p in paths]
    records.append(Scanpath.from_points([[5, 5]], width=56, height=40, image="missing.png", id="missing"))
    jsonl = tmp_path / "data" / "scanpaths.jsonl"
    write_scanpaths(jsonl, records, DatasetInfo(image_root=str(images)))
    with jsonl.open("a") as f:  # a record with a NaN coordinate, as raw exports sometimes have
        f.write('{"id": "nan", "image": "000.png", "width": 56, "height": 40, "fixations": [{"x": NaN, "y": 3}]}\n')
    cfg = TrainConfig.from_yaml(
        TINY, [f"data.scanpaths={jsonl}", f"run.output_dir={tmp_path / 'run'}", "run.checkpointing_steps=0"]
    )
    with pytest.warns(UserWarning, match=r"skipped 1 malformed lines \(lines 6\)"):
        out = train(cfg)
    report = json.loads((out / "data_report.json").read_text())["skipped_samples"]
    assert report["malformed record"] == 1 and report["unreadable image"] >= 1
    with pytest.raises(ValueError, match="line 6"):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        train(
            TrainConfig.from_yaml(
                TINY, [f"data.scanpaths={jsonl}", f"run.output_dir={tmp_path / 'r2'}", "data.skip_bad_samples=false"]
            )
        )


def test_training_lowers_the_loss_on_a_fixed_synthetic_set(tmp_path: Path):
    """The paper's objective, measured on fixed noise and timesteps, falls clearly after training."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from metamergen.testing import tiny_pipeline
    from metamergen.training.data import AdapterTrainingDataset, collate, list_images
    from metamergen.training.loss import adapter_loss, encode_batch
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # two-colour layouts: sky/ground-like halves at a random horizon
        img = np.empty((32, 32, 3), np.uint8)
        h = int(rng.integers(8, 24))
        img[:h], img[h:] = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        Image.fromarray(img).save(images / f"{i}.png")
    cfg = tiny_config(
        tmp_path,
        images,
        "optim.max_steps=60",
        "optim.batch_size=4",
        "optim.learning_rate=3e-3",
        "run.checkpointing_steps=0",
    )

    def fixed_loss(pipe) -> float:
        ds = AdapterTrainingDataset(
            [TrainingItem(str(p), lambda p=p: Image.open(p).convert("RGB")) for p in list_images(images)],
            processor=pipe.feature_extractor,
            patch_size=14,
            resolution=32,
            fixation_counts=cfg.data.fixation_counts,
            blur_levels=cfg.data.blur_levels,
            seed=123,
        )
        batch = collate([ds[i] for i in range(len(ds))])
        text = pipe.encode_prompt([""], torch.device("cpu"))

        def model(*a):
            return pipe.unet(a[0], a[1], encoder_hidden_states=(a[2], pipe.adapters.project(a[3], a[4]))).sample

        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        pipe.adapters.set_scale(pipe.unet, 1.0, 1.0)
        losses = []
        with torch.no_grad():
            for seed in range(4):
                g = torch.Generator().manual_seed(seed)
                encoded = encode_batch(pipe, batch, generator=g, dtype=torch.float32)
                losses.append(
                    adapter_loss(
                        model, noise_scheduler, encoded, text, cfg.optim, generator=g, compute_snr=compute_snr
                    ).item()
                )
        return float(np.mean(losses))

    before = fixed_loss(tiny_pipeline(seed=cfg.run.seed))
    out = train(cfg)
    after = fixed_loss(MetamerGenPipeline.from_pretrained(out / "pipeline"))
    assert after < 0.9 * before, (before, after)  # measured here: 1.114 -> 0.976


def test_optional_lora_trains_and_is_merged_into_the_export(tmp_path: Path):
    from safetensors.torch import load_file

    from metamergen.testing import tiny_pipeline
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    write_images(images, 4)
    out = train(tiny_config(tmp_path, images, "model.lora_rank=4", "run.checkpointing_steps=2"))
    lora = load_file(out / "unet_lora" / "pytorch_lora_weights.safetensors")
    assert lora and all("lora" in k for k in lora)
    exported = load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not [k for k in exported if "lora" in k]  # merged: a plain UNet
    original = tiny_pipeline(seed=0)
    original.adapters.uninstall(original.unet)
    base = original.unet.state_dict()
    changed = [k for k in base if k.endswith("attn1.to_q.weight") and not torch.equal(base[k], exported[k])]
    assert changed  # the merged LoRA moved the attention weights
    frozen = [k for k in base if "conv" in k and k in exported]
    assert frozen and all(torch.equal(base[k], exported[k]) for k in frozen)  # nothing else trained
    pipe = MetamerGenPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(Image.open(images / "000.png"), [[5, 5]], num_inference_steps=2, output_type="np").images.shape[0] == 1


def test_bf16_training_exports_the_original_fp32_frozen_weights(tmp_path: Path):
    from safetensors.torch import load_file

    from metamergen.testing import tiny_pipeline
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    write_images(images, 4)
    out = train(
        tiny_config(tmp_path, images, "run.mixed_precision=bf16", "optim.max_steps=2", "run.checkpointing_steps=0")
    )
    exported = load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    original = tiny_pipeline(seed=0)
    original.adapters.uninstall(original.unet)
    assert all(
        exported[k].dtype == torch.float32 and torch.equal(exported[k], v)
        for k, v in original.unet.state_dict().items()
    )
    adapters = adapter_state(out)
    assert all(v.dtype == torch.float32 for v in adapters.values())


@pytest.mark.slow
def test_adapters_trained_on_a_text_conditioned_base_carry_their_scene(tmp_path: Path):
    """The learning test, under the paper's ε objective and with the project's trainer.

    Fresh adapters on the frozen base of the bundled demo model (VAE, caption-trained UNet,
    DINOv2), trained on toy scenes the model never saw; held-out scenes are then reconstructed
    (one-step latent estimate) from their own tokens and from another scene's. Before training
    the tokens make no difference; after it, a scene's own tokens give the better estimate.
    (On a UNet that only ever saw a constant context this does not happen at all: see
    metamergen.demo.toymodel.)
    """
    from metamergen.demo.run import demo_model_info, load_demo_pipeline
    from metamergen.demo.toymodel import DemoModelConfig, assemble_pipeline
    from metamergen.demo.toyworld import ToyWorldConfig, generate_scene, scene_seeds, write_split
    from metamergen.evaluation.diagnostics import conditioning_reconstruction
    from metamergen.training.trainer import train

    info = demo_model_info()
    trained = load_demo_pipeline()
    torch.manual_seed(0)
    base = assemble_pipeline(
        vae=trained.vae,
        text_encoder=trained.text_encoder,
        tokenizer=trained.tokenizer,
        unet=trained.unet,
        image_encoder=trained.image_encoder,
        config=DemoModelConfig.from_dict(info["model"]),
    )
    base.save_pretrained(tmp_path / "base")
    world = ToyWorldConfig.from_dict(info["world"])
    write_split(tmp_path / "world", 256, seed=50, config=world)  # neither the model's train (0) nor test (1) split
    held = [generate_scene(s, world) for s in scene_seeds(51, 16)]
    images, fixations = [s.image for s in held], [[o.centre for o in s.objects] for s in held]

    before = conditioning_reconstruction(base, images, fixations)
    cfg = TrainConfig.from_yaml(
        ROOT / "configs" / "demo_toyworld.yaml",
        [
            f"model.pipeline={tmp_path / 'base'}",
            f"data.images={tmp_path / 'world' / 'images'}",
            f"data.feature_cache={tmp_path / 'cache'}",
            f"run.output_dir={tmp_path / 'run'}",
            "optim.max_steps=300",
            "optim.batch_size=8",
            "optim.learning_rate=3e-3",
            "optim.lr_warmup_steps=10",
            "optim.min_timestep=400",
            "run.checkpointing_steps=0",
            # the paper's adapters (no local fovea, no LoRA): this tests the conditioning path, not the demo recipe
            "model.foveal_local=false",
            "model.lora_rank=0",
        ],
    )
    after = conditioning_reconstruction(MetamerGenPipeline.from_pretrained(train(cfg) / "pipeline"), images, fixations)
    print(
        "\nlearning test:",
        {k: before[k] for k in ("own", "other", "own_better")},
        {k: after[k] for k in ("own", "other", "own_better")},
    )
    assert abs(before["own"] - before["other"]) < 0.03 * before["other"], before  # untrained: tokens make no difference
    assert after["own"] < 0.95 * after["other"], after
    assert after["own_better"] >= 0.75, after


def test_condition_dropout_zeroes_whole_streams_independently_at_the_configured_rates():
    """drop_conditions: the foveal stream is the masked sharp tokens; a dropped stream is all zeros
    (never a scale of 0), foveal and peripheral drops independent, at their configured rates."""
    from metamergen.training.loss import EncodedBatch, drop_conditions

    b, t, d = 4000, 16, 3
    g = torch.Generator().manual_seed(0)
    sharp, per = torch.rand(b, t, d, generator=g) + 1, torch.rand(b, t, d, generator=g) + 1
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, 5] = True
    enc = EncodedBatch(latents=torch.zeros(b, 4, 2, 2), sharp=sharp, peripheral=per, foveal_mask=mask)
    fov, p = drop_conditions(
        enc, foveal_dropout=0.05, peripheral_dropout=0.10, generator=torch.Generator().manual_seed(1)
    )
    fov_kept = fov.abs().sum((1, 2)) > 0
    per_kept = p.abs().sum((1, 2)) > 0
    assert torch.equal(fov[fov_kept][:, 5], sharp[fov_kept][:, 5]) and (fov[:, :5] == 0).all()  # only the fixated patch
    assert torch.equal(p[per_kept], per[per_kept])
    assert abs((~fov_kept).float().mean() - 0.05) < 0.015 and abs((~per_kept).float().mean() - 0.10) < 0.02
    both = (~fov_kept & ~per_kept).float().mean()
    assert abs(both - 0.005) < 0.004  # independent: 0.05 x 0.10
    assert fov.dtype == p.dtype == torch.float32


def _dropout_batch(b: int = 4000):
    from metamergen.training.loss import EncodedBatch

    g = torch.Generator().manual_seed(0)
    sharp, per = torch.rand(b, 16, 3, generator=g) + 1, torch.rand(b, 16, 3, generator=g) + 1
    mask = torch.ones(b, 16, dtype=torch.bool)
    return EncodedBatch(latents=torch.zeros(b, 4, 2, 2), sharp=sharp, peripheral=per, foveal_mask=mask)


def test_joint_dropout_drops_both_streams_together_on_top_of_the_independent_draws():
    """optim.joint_dropout (default 0, the paper's recipe) adds p_j of dropping both streams at once:
    both are dropped with p_j + (1 - p_j) x 0.05 x 0.10. At 0 nothing extra is drawn, so the paper's
    recipe draws exactly what it drew before the option existed."""
    from metamergen.training.config import OptimConfig
    from metamergen.training.loss import drop_conditions

    enc = _dropout_batch()

    def dropped(**kw):
        fov, per = drop_conditions(
            enc, foveal_dropout=0.05, peripheral_dropout=0.10, generator=torch.Generator().manual_seed(1), **kw
        )
        return fov.abs().sum((1, 2)) == 0, per.abs().sum((1, 2)) == 0

    fov0, per0 = dropped()
    fov_off, per_off = dropped(joint_dropout=0.0)
    assert torch.equal(fov0, fov_off) and torch.equal(per0, per_off)
    fov_j, per_j = dropped(joint_dropout=0.2)
    assert (fov_j | ~fov0).all() and (per_j | ~per0).all()  # the independent drops are kept, more are added
    assert abs((fov_j & per_j).float().mean() - (0.2 + 0.8 * 0.005)) < 0.02
    assert abs(fov_j.float().mean() - (0.2 + 0.8 * 0.05)) < 0.02
    assert OptimConfig().joint_dropout == 0.0
    assert TrainConfig.from_yaml(ROOT / "configs" / "paper_sd15_coco.yaml").optim.joint_dropout == 0.0
    with pytest.raises(ValueError, match=r"optim.joint_dropout .* \[0, 1\]"):
        TrainConfig.from_yaml(TINY, ["optim.joint_dropout=1.5"])


def test_the_loss_applies_the_configured_joint_dropout():
    from metamergen.testing import tiny_scheduler
    from metamergen.training.config import OptimConfig
    from metamergen.training.loss import adapter_loss

    enc = _dropout_batch(64)
    seen = {}

    def model(noisy, t, text, foveal, peripheral):
        seen.update(foveal=foveal, peripheral=peripheral)
        return torch.zeros_like(noisy)

    scheduler = tiny_scheduler()
    text = torch.zeros(1, 77, 8)
    adapter_loss(
        model, scheduler, enc, text, OptimConfig(joint_dropout=1.0), generator=torch.Generator().manual_seed(0)
    )
    assert (seen["foveal"] == 0).all() and (seen["peripheral"] == 0).all()
    adapter_loss(model, scheduler, enc, text, OptimConfig(), generator=torch.Generator().manual_seed(0))
    assert (seen["peripheral"].abs().sum((1, 2)) > 0).float().mean() > 0.8


@pytest.mark.parametrize("backend", ["FSDP", "DEEPSPEED"])
def test_sharded_backends_are_refused_up_front(tmp_path: Path, monkeypatch, backend: str):
    images = tmp_path / "img"
    write_images(images, 2)
    from metamergen.training.trainer import train

    monkeypatch.setenv(f"ACCELERATE_USE_{backend}", "true")
    with pytest.raises(RuntimeError, match=f"{backend} was requested.*DDP only"):
        train(tiny_config(tmp_path, images))
    assert not (tmp_path / "run").exists()  # refused before anything is written


# --------------------------------------------------------------------------- run folders and bad configs


def fake_run(cfg: TrainConfig, step: int = 2) -> Path:
    """A run folder as an interrupted run leaves it: config.yaml and one checkpoint (no weights needed)."""
    import yaml

    out = Path(cfg.run.output_dir)
    (out / f"checkpoint-{step}").mkdir(parents=True)
    state = {"global_step": step, "micro_step": step, "epoch": 0, "batch_in_epoch": step}
    (out / f"checkpoint-{step}" / "train_state.json").write_text(json.dumps(state))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out


def test_resuming_with_a_changed_config_is_refused_naming_the_keys(tmp_path: Path):
    """Before: any change was accepted and config.yaml overwritten; now only settings that cannot
    change the weights pass, a few more with allow_config_change, and the rest never."""
    from metamergen.training.config import ConfigError
    from metamergen.training.run_folder import plan_run
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    out = fake_run(tiny_config(tmp_path, images))
    recorded = (out / "config.yaml").read_bytes()
    changed = tiny_config(tmp_path, images, "optim.learning_rate=5e-4", "data.resolution=64", "optim.max_steps=6")
    with pytest.raises(ConfigError) as err:
        train(changed, resume="latest", allow_config_change=True)
    message = str(err.value)
    assert "\n" not in message and "checkpoint-2 (step 2)" in message
    assert "data.resolution 32 -> 64; optim.learning_rate 0.001 -> 0.0005" in message
    assert "(and optim.max_steps 4 -> 6, allowed with --allow-config-change)" in message
    assert "start a new run.output_dir" in message
    longer = tiny_config(tmp_path, images, "optim.max_steps=6")
    with pytest.raises(ConfigError, match=r"optim\.max_steps 4 -> 6\. Pass --allow-config-change"):
        train(longer, resume="latest")
    assert (out / "config.yaml").read_bytes() == recorded and sorted(p.name for p in out.iterdir()) == [
        "checkpoint-2",
        "config.yaml",
    ]  # refused before anything was written
    assert plan_run(longer, "latest", allow_config_change=True).changes == {"optim.max_steps": (4, 6)}
    free = plan_run(tiny_config(tmp_path, images, "run.log_every=5", "data.num_workers=2"), "latest")
    assert free.changes == {"data.num_workers": (0, 2), "run.log_every": (1, 5)} and free.step == 2
    with pytest.raises(ConfigError, match=r"not a complete checkpoint \(no train_state\.json\)"):
        plan_run(longer, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="give only one of them"):
        plan_run(longer, "latest", overwrite=True)


def test_a_new_run_is_not_started_over_an_existing_one_without_overwrite(tmp_path: Path):
    from metamergen.training.config import ConfigError
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    write_images(images, 4)
    cfg = tiny_config(tmp_path, images)
    out = fake_run(cfg, step=8)
    (out / "pipeline").mkdir()
    (out / "pipeline" / "old.txt").write_text("the previous run's model")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == (
        f"run.output_dir {out} already holds a run (checkpoint-8, pipeline/): pass --resume latest to continue "
        "it, --overwrite to delete it and start again, or choose another run.output_dir."
    )
    assert (out / "checkpoint-8" / "train_state.json").is_file()  # untouched
    train(cfg, overwrite=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # no stale step 8
    assert not (out / "pipeline" / "old.txt").exists() and (out / "pipeline" / "model_index.json").is_file()
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own outputs are deleted


def test_an_interrupted_run_can_be_extended_with_allow_config_change(tmp_path: Path):
    import yaml
    from accelerate.state import AcceleratorState

    from metamergen.training.trainer import train

    images = tmp_path / "img"
    write_images(images, 4)
    train(tiny_config(tmp_path, images, "run.stop_after_step=2"))
    AcceleratorState._reset_state(reset_partial_state=True)
    out = train(tiny_config(tmp_path, images, "optim.max_steps=6"), resume="latest", allow_config_change=True)
    assert json.loads((out / "data_report.json").read_text())["steps"] == 6
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["max_steps"] == 6
    records = [json.loads(line) for line in (out / "config_changes.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["step"] == 2
    assert records[0]["changes"] == {"optim.max_steps": [4, 6], "run.stop_after_step": [2, None]}


TYPOS = [
    (["optim.learnin_rate=1"], "Unknown key(s) ['learnin_rate'] in section 'optim' (did you mean 'learning_rate'?)"),
    (["optm.learning_rate=1"], "Unknown config section(s) ['optm'] (did you mean 'optim'?)"),
    (["learning_rate"], "is not of the form section.key=value"),
    (["optim.learning_rate=fast"], "Config key 'optim.learning_rate' needs a number, got 'fast'"),
]


@pytest.mark.parametrize("overrides, message", TYPOS, ids=[o[0] for o, _ in TYPOS])
def test_config_typos_are_one_line_errors_naming_the_key(tmp_path: Path, capsys, overrides, message):
    """Before: training/train.py (the accelerate launch entry point) printed a traceback."""
    from metamergen.commands import main as metamergen
    from metamergen.commands.train import main as train_py

    assert train_py(["--config", str(TINY), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: ") and message in err[0], err
    if "Unknown key" in message:
        assert "Valid keys: learning_rate, weight_decay," in err[0]
    assert metamergen(["train", "--config", str(TINY), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metamergen train: error: ") and message in err[0], err


def test_bad_config_files_and_flags_are_one_line_errors(tmp_path: Path, capsys):
    from metamergen.commands.train import main as train_py

    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  tiny: true\nrun:\n  output_dri: x\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [1, 2\n")
    cases = [
        (["--config", str(typo)], "Unknown key(s) ['output_dri'] in section 'run' (did you mean 'output_dir'?)"),
        (["--config", str(broken)], "is not valid YAML"),
        (["--config", str(tmp_path / "missing.yaml")], "No config file"),
        (["--config", str(TINY), "--resume", "latest", "--overwrite"], "give only one of them"),
        (["--config", str(TINY), "--allow-config-change"], "--allow-config-change applies to --resume only"),
    ]
    for argv, message in cases:
        assert train_py(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_the_foveal_loss_weight_weighs_the_latent_cells_under_the_shown_patches():
    """optim.foveal_loss_weight W puts W on the latent cells under the foveal stream's patches (1
    elsewhere, each sample normalised by its mean weight); a dropped foveal stream shows nothing,
    so its sample is unweighted; W = 1 is the paper's plain MSE."""
    from metamergen.foveation.fovea import token_weight_map
    from metamergen.testing import tiny_scheduler
    from metamergen.training.config import OptimConfig
    from metamergen.training.loss import EncodedBatch, adapter_loss

    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 4 + 2] = True  # patch (row 1, col 2) of a 4 x 4 grid
    cells = token_weight_map(mask, (8, 8), 10.0)
    assert cells.shape == (2, 1, 8, 8)
    assert (cells[:, 0, 2:4, 4:6] == 10).all() and cells.sum().item() == 2 * (60 + 40)
    # a non-multiple grid: each cell takes the patch under its centre (rows 1-2 and column 3 of 6)
    assert token_weight_map(mask, (6, 6), 3.0)[0, 0].eq(3).nonzero().tolist() == [[1, 3], [2, 3]]

    scheduler = tiny_scheduler()
    alphas = scheduler.alphas_cumprod
    enc = EncodedBatch(
        latents=torch.zeros(2, 4, 8, 8), sharp=torch.ones(2, 16, 3), peripheral=torch.ones(2, 16, 3), foveal_mask=mask
    )
    text = torch.zeros(1, 77, 8)

    def loss(where: str, **optim) -> float:
        def model(noisy, t, text, foveal, peripheral):  # latents are 0: noisy = sqrt(1 - abar) * noise
            noise = noisy / (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
            err = torch.zeros_like(noisy)
            inside = err[:, :, 2:4, 4:6]
            (inside if where == "inside" else err).fill_(1.0)
            if where == "outside":
                inside.fill_(0.0)
            return noise + err

        base = dict(foveal_dropout=0.0, peripheral_dropout=0.0)
        return adapter_loss(
            model, scheduler, enc, text, OptimConfig(**{**base, **optim}), generator=torch.Generator().manual_seed(0)
        ).item()

    assert loss("inside") == pytest.approx(4 / 64, rel=1e-4)
    assert loss("inside", foveal_loss_weight=10.0) == pytest.approx(40 / 100, rel=1e-4)
    assert loss("outside", foveal_loss_weight=10.0) == pytest.approx(60 / 100, rel=1e-4)
    assert loss("inside", foveal_loss_weight=10.0, foveal_dropout=1.0) == pytest.approx(4 / 64, rel=1e-4)
    assert loss("inside", foveal_loss_weight=10.0, snr_gamma=5.0) > loss("inside", snr_gamma=5.0)
    with pytest.raises(ValueError, match="foveal_loss_weight must be positive"):
        OptimConfig(foveal_loss_weight=0.0)
