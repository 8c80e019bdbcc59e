"""The training loop: :func:`train` (``metamergen train`` / ``accelerate launch training/train.py ...``).

The paper's recipe: frozen SD1.5 and DINOv2; only the two resamplers and the new K/V train, with the
standard epsilon-prediction MSE; each stream's condition is dropped independently (foveal p = 0.05,
peripheral p = 0.10) by **zeroing its tokens**, so every trainable parameter is used in every step
and DDP needs no ``find_unused_parameters``.

Reproducibility: data order comes from accelerate's seedable sampler (seed, epoch); masks and blur
levels from (seed, epoch, index); noise, timesteps, dropout and VAE sampling from (seed, micro-step,
rank). Nothing depends on RNG state carried between steps, so ``--resume latest`` after an
interruption ends with the same adapter weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from metamergen.adapters.model import MetamerGenAdapters
from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline
from metamergen.training.checkpoints import save_checkpoint
from metamergen.training.config import OptimConfig, TrainConfig
from metamergen.training.data import (
    AdapterTrainingDataset,
    BadDataLog,
    TrainingItem,
    collate,
    list_images,
    open_rgb,
)
from metamergen.training.loss import adapter_loss, encode_batch
from metamergen.training.run_folder import clear_previous_run, plan_run, record_config_changes
from metamergen.utils.distributed import leave_process_group
from metamergen.utils.io import atomic_write, replace_dir
from metamergen.utils.seeds import derive_seed

logger = logging.getLogger("metamergen.train")

__all__ = [
    "AdapterTrainingModel",
    "build_items",
    "build_optimizer",
    "load_training_pipeline",
    "mixed_precision_dtype",
    "train",
]


class AdapterTrainingModel(nn.Module):
    """The module DDP wraps: adapters (trainable, registered) + the frozen UNet (not registered, so
    DDP neither broadcasts nor tracks its ~860M frozen parameters). One forward uses every
    trainable parameter: both resamplers and, through the UNet's processors, all new K/V."""

    def __init__(
        self, unet: nn.Module, adapters: MetamerGenAdapters, extra_parameters: Sequence[nn.Parameter] = ()
    ) -> None:
        super().__init__()
        self.adapters = adapters
        self._unet = [unet]  # a list hides it from nn.Module registration
        # trainable parameters living inside the UNet (LoRA), registered so DDP syncs them too
        self.unet_trainable = nn.ParameterList(extra_parameters)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor,
        foveal_tokens: torch.Tensor,
        peripheral_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Noise prediction ``(B, 4, h, w)`` for noisy latents given text, foveal and peripheral tokens ``(B, T, D)``.

        The tokens enter the resamplers in the adapters' dtype (fp32 while training), everything
        else enters the UNet in its own (the run's), so no autocast is needed; the prediction is
        in the UNet's dtype.
        """
        unet, dtype = self._unet[0], self._unet[0].dtype
        adapter_dtype = self.adapters.dtype
        streams = self.adapters.project(foveal_tokens.to(adapter_dtype), peripheral_tokens.to(adapter_dtype))
        hidden = (text_embeds.to(dtype), [s.to(dtype) for s in streams])
        region = self.adapters.foveal_region(foveal_tokens)  # None unless the fovea is gated
        with self.adapters.gating(unet, region, tuple(noisy_latents.shape[-2:])):
            return unet(noisy_latents.to(dtype), timesteps, encoder_hidden_states=hidden).sample


# ----------------------------------------------------------------------------- building blocks


def mixed_precision_dtype(mixed_precision: str) -> torch.dtype:
    """The run's dtype: the frozen models' and the validation renders' (trainable weights stay fp32).

    Parameters
    ----------
    mixed_precision
        accelerate's setting, ``"no"``, ``"fp16"`` or ``"bf16"`` (``run.mixed_precision``).

    Returns
    -------
    torch.dtype
        ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.
    """
    dtypes = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if mixed_precision not in dtypes:
        raise ValueError(f"run.mixed_precision is 'no', 'fp16' or 'bf16', got {mixed_precision!r}.")
    return dtypes[mixed_precision]


def load_training_pipeline(cfg: TrainConfig) -> MetamerGenPipeline:
    """The pipeline whose adapters will be trained (tiny, a saved pipeline, or hub/local base models)."""
    m = cfg.model
    if m.tiny:
        from metamergen.testing import tiny_pipeline

        pipe = tiny_pipeline(seed=cfg.run.seed)
    elif m.pipeline:
        pipe = MetamerGenPipeline.from_pretrained(m.pipeline)
    else:
        adapter_config = {
            "num_tokens": m.num_tokens,
            "resampler_hidden_dim": m.resampler_hidden_dim,
            "resampler_depth": m.resampler_depth,
            "resampler_heads": m.resampler_heads,
            "mask_empty_tokens": m.mask_empty_tokens,
        }
        pipe = MetamerGenPipeline.from_base_models(
            m.base_model,
            m.image_encoder,
            m.adapters,
            encoder_resolution=m.encoder_resolution,
            adapter_config=adapter_config,
        )
    if m.foveal_gate or m.foveal_local or m.peripheral_local:  # no weights: on for fresh and loaded adapters alike
        pipe.adapters.register_to_config(
            foveal_gate=m.foveal_gate,
            foveal_gate_dilation=m.foveal_gate_dilation,
            foveal_local=m.foveal_local,
            peripheral_local=m.peripheral_local,
        )
        pipe.adapters.install(pipe.unet)
    return pipe


def build_items(cfg: TrainConfig) -> tuple[list[TrainingItem], Counter]:
    """Training entries from the configured source, and what was dropped while reading records."""
    d = cfg.data
    sources = [s for s in (d.images, d.hf_dataset, d.scanpaths) if s]
    if len(sources) != 1:
        raise ValueError("Set exactly one data source: data.images, data.hf_dataset or data.scanpaths.")
    dropped: Counter = Counter()
    if d.images:
        items = [TrainingItem(str(p), (lambda p=p: open_rgb(p))) for p in list_images(d.images)]
    elif d.hf_dataset:
        import datasets

        ds = datasets.load_dataset(d.hf_dataset, split=d.hf_split)
        if d.image_column not in ds.column_names:
            raise ValueError(f"Dataset {d.hf_dataset} has no column {d.image_column!r}; columns: {ds.column_names}.")
        items = [
            TrainingItem(f"{d.hf_dataset}[{i}]", (lambda i=i: ds[i][d.image_column].convert("RGB")))
            for i in range(len(ds))
        ]
    else:
        from dataclasses import replace

        from metamergen.fixations.io import DatasetInfo, read_info, read_scanpaths, resolve_image

        path = Path(d.scanpaths)
        info = read_info(path)
        if d.image_root:
            info = replace(info or DatasetInfo(), image_root=d.image_root)
        scanpaths = read_scanpaths(path, strict=not d.skip_bad_samples, report=dropped)
        items = []
        for sp in scanpaths:
            if not sp.image:
                dropped["scanpath without image"] += 1
                continue
            image_path = resolve_image(info, sp.image, path)
            items.append(TrainingItem(str(image_path), (lambda p=image_path: open_rgb(p)), scanpath=sp))
    if d.max_samples is not None:
        items = items[: d.max_samples]
    return items, dropped


def build_optimizer(params: Sequence[nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the config's learning rate, betas, decay and eps."""
    return torch.optim.AdamW(
        params,
        lr=optim.learning_rate,
        betas=(optim.adam_beta1, optim.adam_beta2),
        weight_decay=optim.weight_decay,
        eps=optim.adam_epsilon,
    )


def _add_lora(unet: nn.Module, cfg: TrainConfig) -> list[nn.Parameter]:
    """Attach a peft LoRA to the UNet's attention projections; returns its (fp32) parameters."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    rank = cfg.model.lora_rank
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=cfg.model.lora_alpha or rank,
            init_lora_weights="gaussian",
            target_modules=list(cfg.model.lora_targets),
        )
    )
    lora = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    cast_training_params(unet, dtype=torch.float32)
    return lora


def _export(trained: MetamerGenPipeline, cfg: TrainConfig, output_dir: Path) -> None:
    """Final outputs, each written to a temporary folder and renamed into place: ``pipeline/``
    (loadable with ``MetamerGenPipeline.from_pretrained``), ``adapters/`` and, with LoRA,
    ``unet_lora/`` (diffusers' LoRA format, loadable with ``load_lora_weights``).

    Training keeps the frozen models in the mixed-precision dtype, so the exported pipeline is
    rebuilt from the original (fp32) frozen weights plus the trained adapters, and a LoRA is merged
    into those fp32 weights rather than into rounded ones (the export then needs no peft).
    """
    if trained.unet.dtype == torch.float32 and not cfg.model.lora_rank:
        export = trained
    else:
        export = load_training_pipeline(cfg)
        export.adapters.load_state_dict({k: v.float().cpu() for k, v in trained.adapters.state_dict().items()})
    if cfg.model.lora_rank:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        lora_state = {k: v.float().cpu() for k, v in get_peft_model_state_dict(trained.unet).items()}
        _add_lora(export.unet, cfg)
        set_peft_model_state_dict(export.unet, lora_state)
        layers = convert_state_dict_to_diffusers(lora_state)
        _replace_dir(
            output_dir / "unet_lora", lambda d: StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=layers)
        )
        export.unet.fuse_lora()
        export.unet.unload_lora()
    _replace_dir(output_dir / "pipeline", export.save_pretrained)
    _replace_dir(output_dir / "adapters", export.adapters.save_pretrained)


def _replace_dir(final: Path, save) -> None:
    """``save(tmp)`` into a temporary sibling folder, then swap it in for ``final`` (:func:`replace_dir`)."""
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save(tmp)
    replace_dir(tmp, final)


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig, resume: str | None = None, *, allow_config_change: bool = False, overwrite: bool = False
) -> Path:
    """Train the adapters; returns the output folder (``pipeline/``, ``adapters/``, checkpoints, logs).

    Parameters
    ----------
    cfg
        The configuration; ``cfg.run.output_dir`` is the run folder.
    resume
        ``"latest"`` (the newest checkpoint in the run folder; none there: from scratch) or a
        checkpoint folder. The config must match the run's ``config.yaml`` but for the keys
        :mod:`metamergen.training.run_folder` lists.
    allow_config_change
        When resuming, also accept changes of
        :data:`~metamergen.training.run_folder.ALLOWED_ON_RESUME` keys (``optim.max_steps``, ...).
    overwrite
        Start a new run in a folder that holds one (checkpoints or an exported pipeline), deleting
        that run's outputs first; without it such a folder is refused.

    Raises
    ------
    ConfigError
        The run folder and the config do not fit (see :func:`~metamergen.training.run_folder.plan_run`);
        raised before anything is written.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, cast_training_params, compute_snr
    from tqdm.auto import tqdm

    out = Path(cfg.run.output_dir)
    start = plan_run(cfg, resume, allow_config_change=allow_config_change, overwrite=overwrite)
    cpu = cfg.run.cpu or not torch.cuda.is_available()
    report_to = cfg.run.report_to
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            logger.warning("tensorboard is not installed (pip install tensorboard): logging to the console only.")
            report_to = None
    sharded = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"]
    if sharded:  # refused before accelerate builds them: they would fail deep inside prepare()
        raise RuntimeError(
            f"{sharded[0]} was requested by the accelerate config, but MetamerGen trains with DDP only: the "
            "adapters' K/V projections are shared with the frozen UNet's attention layers, which sharding "
            "would split, and the trainable part is small. Use a multi-GPU DDP config "
            "(training/accelerate/multi_gpu.yaml); for memory, run.gradient_checkpointing=true or a smaller batch."
        )
    accelerator = Accelerator(
        cpu=cpu,  # on GPU-less machines this is what makes multi-process runs form a process group
        mixed_precision=cfg.run.mixed_precision,
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.run.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched but this one trains in a group of {accelerator.num_processes}: "
            "each would train alone. On machines without GPUs set run.cpu=true (Accelerator(cpu=True))."
        )
    if not accelerator.is_main_process:  # one process reports; the entry point configures handlers
        logger.setLevel(logging.WARNING)
    set_seed(cfg.run.seed)  # identical fresh adapters on every rank
    if accelerator.is_main_process:
        if start.clear:
            clear_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda p: Path(p).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
        record_config_changes(out, start)
    accelerator.wait_for_everyone()

    # ---- model
    pipe = load_training_pipeline(cfg)
    pipe.set_progress_bar_config(disable=True)
    attention = cfg.run.attention
    if attention == "auto":
        from diffusers.utils import is_xformers_available

        attention = "xformers" if (is_xformers_available() and not cpu) else "sdpa"
    if attention == "xformers":  # before the optimizer exists: it rebuilds the processors
        pipe.enable_xformers_memory_efficient_attention()
    weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
    params = pipe.prepare_for_adapter_training()
    for module in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.image_encoder, pipe.adapters):
        module.to(accelerator.device)
        if module.dtype != weight_dtype and module is not pipe.adapters:  # diffusers' to(dtype) always warns
            module.to(dtype=weight_dtype)
    cast_training_params(pipe.adapters, dtype=torch.float32)  # the UNet cast above touched the shared K/V
    lora_params = _add_lora(pipe.unet, cfg) if cfg.model.lora_rank else []
    params = params + lora_params
    if cfg.run.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    model = AdapterTrainingModel(pipe.unet, pipe.adapters, lora_params)
    pipe.adapters.set_scale(pipe.unet, 1.0, 1.0)  # training runs both streams at scale 1 (renders restore it)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # ---- data
    items, read_dropped = build_items(cfg)
    sampling = dict(
        fixation_counts=cfg.data.fixation_counts,
        blur_levels=cfg.data.blur_levels,
        seed=cfg.run.seed,
        skip_bad_samples=cfg.data.skip_bad_samples,
    )
    if cfg.data.feature_cache:
        dataset = _prepare_feature_cache(accelerator, pipe, items, cfg, sampling)
        if cfg.run.cache_only:
            accelerator.end_training()
            leave_process_group()
            return out
    else:
        dataset = AdapterTrainingDataset(
            items,
            processor=pipe.feature_extractor,
            patch_size=int(pipe.image_encoder.config.patch_size),
            resolution=cfg.data.resolution,
            **sampling,
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        drop_last=True,
    )
    optimizer = build_optimizer(params, cfg.optim)
    lr_scheduler = get_scheduler(
        cfg.optim.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.optim.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.optim.max_steps * accelerator.num_processes,
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} samples make no full batch of {cfg.optim.batch_size} per process on "
            f"{accelerator.num_processes} process(es): lower optim.batch_size or add data."
        )
    ema = None
    if cfg.optim.ema_decay:
        ema = EMAModel(pipe.adapters.parameters(), decay=cfg.optim.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # ---- resume
    # where the data stream stands: micro-steps and the position in the epoch are stored, not
    # derived from global_step, because accelerate forces an optimizer step at each epoch's end
    global_step = micro_step = epoch = batch_in_epoch = 0
    bad_data = BadDataLog()
    if resume:
        ckpt = start.checkpoint  # chosen (and its config checked) by plan_run before anything was written
        if ckpt is None:
            logger.info("No checkpoint in %s: starting from scratch.", out)
        else:
            accelerator.load_state(str(ckpt))
            state = json.loads((ckpt / "train_state.json").read_text())
            global_step, micro_step = state["global_step"], state["micro_step"]
            epoch, batch_in_epoch = state["epoch"], state["batch_in_epoch"]
            bad_data.load_state_dict(state.get("bad_data", {}), count_draws=accelerator.is_main_process)
            logger.info("Resumed from %s (step %d).", ckpt, global_step)

    if accelerator.is_main_process:
        accelerator.init_trackers("metamergen", config={k: v for k, v in _flat(cfg.to_dict()).items()})
    with torch.no_grad():
        empty_text = pipe.encode_prompt([""], accelerator.device)
    seen: list[int] = []
    bar = tqdm(
        total=cfg.optim.max_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="train"
    )
    t_last, samples_since = time.perf_counter(), 0
    rank = accelerator.process_index
    while global_step < cfg.optim.max_steps:
        if batch_in_epoch >= len(loader):
            epoch, batch_in_epoch = epoch + 1, 0
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
        for batch in epoch_loader:
            batch_in_epoch += 1
            bad_data.update(batch["skipped"])
            seen.extend(batch["index"].tolist())
            g = torch.Generator(accelerator.device).manual_seed(derive_seed(cfg.run.seed, micro_step, rank, bits=63))
            micro_step += 1
            with accelerator.accumulate(model):
                encoded = encode_batch(pipe, batch, generator=g, dtype=weight_dtype)
                loss = adapter_loss(
                    model, noise_scheduler, encoded, empty_text, cfg.optim, generator=g, compute_snr=compute_snr
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples_since += batch["blur"].shape[0]
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if ema is not None:
                ema.step(pipe.adapters.parameters())
            bar.update(1)
            if global_step % cfg.run.log_every == 0 or global_step == 1:
                now = time.perf_counter()
                logs = {
                    "loss": accelerator.gather(loss.detach()).mean().item(),
                    "lr": lr_scheduler.get_last_lr()[0],
                    "samples_per_second": samples_since * accelerator.num_processes / max(now - t_last, 1e-9),
                }
                t_last, samples_since = now, 0
                accelerator.log(logs, step=global_step)
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if cfg.run.checkpointing_steps and global_step % cfg.run.checkpointing_steps == 0:
                state = {
                    "global_step": global_step,
                    "micro_step": micro_step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "bad_data": BadDataLog.merged(gather_object([bad_data.state_dict()])).state_dict(),
                }
                save_checkpoint(accelerator, out, state, cfg.run.checkpoints_total_limit)
                if cfg.run.stop_after_step is not None and global_step >= cfg.run.stop_after_step:
                    logger.info("Stopping after step %d as configured (run.stop_after_step).", global_step)
                    bar.close()
                    accelerator.end_training()
                    leave_process_group()
                    return out
            if cfg.run.validation_steps and global_step % cfg.run.validation_steps == 0:
                _validate(accelerator, pipe, ema, cfg, out, global_step)
            if global_step >= cfg.optim.max_steps:
                break
    bar.close()

    # ---- report, consistency check, export
    bad_data = BadDataLog.merged(gather_object([bad_data.state_dict()]))
    checksum = float(sum(p.detach().double().sum() for p in params))
    checksums = gather_object([checksum])
    ranks_dir = out / "ranks"
    if cfg.run.record_sample_ids:
        ranks_dir.mkdir(parents=True, exist_ok=True)
        (ranks_dir / f"rank-{rank}.json").write_text(
            json.dumps(
                {"rank": rank, "world_size": accelerator.num_processes, "indices": seen, "adapter_checksum": checksum}
            )
        )
    if ema is not None:
        ema.copy_to(pipe.adapters.parameters())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if len(set(checksums)) != 1:
            raise RuntimeError(f"Adapters diverged across processes (checksums {checksums}); please report this.")
        report = {
            "steps": global_step,
            "world_size": accelerator.num_processes,
            # distinct items per reason (bad images met while training, records dropped while reading)
            "skipped_samples": dict(bad_data.counts() + read_dropped),
            "bad_items": [{"item": k, "reason": r} for k, r in sorted(bad_data.items.items())],
            "replaced_draws": bad_data.replaced_draws,
        }
        atomic_write(out / "data_report.json", lambda p: Path(p).write_text(json.dumps(report, indent=2)))
        if bad_data.items or read_dropped:
            found = [bad_data.summary()] if bad_data.items else []
            found += [f"{n} {reason}" for reason, n in sorted(read_dropped.items())]
            logger.warning(
                "Skipped during training: %s; every item is listed in %s.", "; ".join(found), out / "data_report.json"
            )
        _export(pipe, cfg, out)
        logger.info("Saved the trained pipeline to %s and the adapters to %s.", out / "pipeline", out / "adapters")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    leave_process_group()
    return out


def _prepare_feature_cache(accelerator, pipe, items, cfg: TrainConfig, sampling: dict):
    """Run (or finish) the distributed cache pre-pass, then read samples from the cache."""
    from metamergen.training.feature_cache import CachedFeatureDataset, cache_features, cache_settings, check_cache

    cache_dir = Path(cfg.data.feature_cache)
    if accelerator.is_main_process:
        check_cache(cache_dir, cache_settings(pipe, cfg.data.resolution, cfg.data.blur_levels, torch.float16))
    accelerator.wait_for_everyone()
    counts = cache_features(
        pipe,
        items,
        cache_dir,
        resolution=cfg.data.resolution,
        blur_levels=cfg.data.blur_levels,
        batch_size=cfg.optim.batch_size,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        progress=accelerator.is_local_main_process,
    )
    logger.info("Feature cache (process %d): %s", accelerator.process_index, dict(counts))
    accelerator.wait_for_everyone()
    return CachedFeatureDataset(cache_dir, items, **sampling)


def _validate(accelerator, pipe, ema, cfg: TrainConfig, out: Path, step: int) -> None:
    """Render the validation scenes on the main process; images to disk and to the tracker."""
    import numpy as np
    from PIL import Image

    if accelerator.is_main_process and cfg.run.validation_images:
        if ema is not None:
            ema.store(pipe.adapters.parameters())
            ema.copy_to(pipe.adapters.parameters())
        try:
            folder = out / "validation" / f"step-{step:07d}"
            rendered = []
            for i, path in enumerate(cfg.run.validation_images):
                image = Image.open(path).convert("RGB")
                fix = cfg.run.validation_fixations[i] if i < len(cfg.run.validation_fixations) else []
                # no autocast (it would pick fp16 on CUDA in a bf16 run): the frozen models are in the run's
                # dtype and the fp32 adapters meet it in their forward, so the render is in the run's dtype
                img = pipe(
                    image,
                    [fix],
                    num_inference_steps=cfg.run.validation_num_inference_steps,
                    generator=[torch.Generator().manual_seed(cfg.run.seed)],
                ).images[0]
                target = folder / f"{i:02d}.png"
                atomic_write(target, lambda p, img=img: img.save(p, format="PNG"))
                rendered.append(np.asarray(img))
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_images("validation", np.stack(rendered), step, dataformats="NHWC")
        finally:
            if ema is not None:
                ema.restore(pipe.adapters.parameters())
    accelerator.wait_for_everyone()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = "none" if v is None else v
        else:
            out[key] = str(v)
    return out
