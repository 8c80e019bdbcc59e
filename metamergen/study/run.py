"""Running a study plan: render what is not done yet, resumably."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metamergen.fixations.records import Scanpath
from metamergen.study.manifest import (
    IMAGES_DIR,
    MANIFEST_NAME,
    append_rows,
    completed_image_ids,
    merge_manifest,
    part_name,
)
from metamergen.study.plan import StudyJob
from metamergen.utils.io import atomic_write

__all__ = ["StudyRunSummary", "run_study"]


@dataclass(frozen=True)
class StudyRunSummary:
    """What :func:`run_study` did."""

    planned: int
    already_done: int
    generated: int
    scenes_encoded: int


def _call_key(job: StudyJob) -> tuple:
    return (
        job.foveal_scale,
        job.peripheral_scale,
        job.drop_streams,
        job.guidance,
        job.guidance_scale,
        job.steps,
        job.height,
        job.width,
    )


def run_study(
    pipe: Any,
    jobs: Sequence[StudyJob],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    progress: bool = True,
    process_index: int = 0,
    num_processes: int = 1,
) -> StudyRunSummary:
    """Render the jobs not yet done into ``out_dir`` (``images/*.png`` + ``manifest.jsonl``).

    Each scene with pending jobs is encoded once (one :meth:`~MetamerGenPipeline.encode_scene`
    call, two DINOv2 passes); its jobs are rendered in batches of up to ``batch_size`` images that
    share scales and sampler settings (lists, prefixes and hypotheses mix freely), each image with
    its own generator seeded by its ``seed``. After each batch the PNGs are written atomically and
    their rows appended to the manifest. Jobs already done (module docstring) are skipped.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline` (anything with ``encode_scene`` and the
        same call signature).
    jobs
        From :func:`plan_study`.
    out_dir
        Output folder (created if missing).
    batch_size
        Images per pipeline call.
    progress
        Show a tqdm bar over images.
    process_index, num_processes
        This process's share of a multi-process run (``accelerate launch``): the scenes of the plan,
        in plan order, are dealt out round-robin, so each scene is encoded by one process and
        batched exactly as in a one-process run (the images are the same whatever the process
        count). Each process appends to its own manifest part; the caller merges them with
        :func:`~metamergen.study.manifest.merge_manifest` once every process is done. With one
        process the manifest is merged (sorted into plan order) before returning.
    """
    import torch
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0 <= int(process_index) < int(num_processes):
        raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}.")
    ids = Counter(j.image_id for j in jobs)
    if any(n > 1 for n in ids.values()):
        raise ValueError("jobs contain the same image_id twice; pass the list plan_study returned.")
    out_dir = Path(out_dir)
    done = completed_image_ids(out_dir)
    pending = [j for j in jobs if j.image_id not in done]
    scene_order = list(dict.fromkeys(j.scene for j in jobs))  # plan order, the same in every process
    mine = {scene for k, scene in enumerate(scene_order) if k % int(num_processes) == int(process_index)}
    by_scene: dict[tuple[str, float], list[StudyJob]] = {}
    for job in pending:
        if job.scene in mine:
            by_scene.setdefault((job.scene, job.peripheral_blur), []).append(job)
    manifest = out_dir / (MANIFEST_NAME if int(num_processes) == 1 else part_name(process_index))
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar over images, not one per denoising loop
    generated = 0
    try:
        with tqdm(total=sum(map(len, by_scene.values())), unit="image", disable=not progress, desc="generate") as bar:
            for (scene_path, blur), scene_jobs in by_scene.items():
                with Image.open(scene_path) as im:
                    image = im.convert("RGB")
                encoding = pipe.encode_scene(image, peripheral_blur=blur)
                groups: dict[tuple, list[StudyJob]] = {}
                for job in scene_jobs:
                    groups.setdefault(_call_key(job), []).append(job)
                for group in groups.values():
                    for start in range(0, len(group), int(batch_size)):
                        batch = group[start : start + int(batch_size)]
                        first = batch[0]
                        out = pipe(
                            scene=encoding,
                            fixations=[
                                Scanpath.from_points(
                                    np.asarray(j.fixations, dtype=np.float64).reshape(-1, 2),
                                    width=image.width,
                                    height=image.height,
                                    off_image="error",
                                )
                                for j in batch
                            ],
                            num_images_per_prompt=1,
                            generator=[torch.Generator().manual_seed(j.seed) for j in batch],
                            num_inference_steps=first.steps,
                            guidance=first.guidance,
                            guidance_scale=first.guidance_scale,
                            foveal_scale=first.foveal_scale,
                            peripheral_scale=first.peripheral_scale,
                            drop_streams=list(first.drop_streams),
                            height=first.height,
                            width=first.width,
                            output_type="pil",
                        )
                        for job, generation in zip(batch, out.images):
                            atomic_write(out_dir / job.path, lambda p, g=generation: g.save(p, format="PNG"))
                        append_rows(manifest, [j.record() for j in batch])
                        generated += len(batch)
                        bar.update(len(batch))
    finally:
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(**bar_config)
    if int(num_processes) == 1:
        merge_manifest(out_dir, [j.image_id for j in jobs])
    return StudyRunSummary(
        planned=len(jobs), already_done=len(jobs) - len(pending), generated=generated, scenes_encoded=len(by_scene)
    )
