"""Running a study plan: render what is not done yet, resumably."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metamergen.fixations.records import Scanpath
from metamergen.study.manifest import (
    IMAGES_DIR,
    MANIFEST_NAME,
    append_rows,
    check_manifest,
    merge_manifest,
    part_name,
)
from metamergen.study.plan import StudyJob
from metamergen.utils.io import atomic_write, remove_temporaries

__all__ = ["StudyResumeWarning", "StudyRunSummary", "resume_messages", "run_study"]


class StudyResumeWarning(UserWarning):
    """What :func:`run_study` repaired in an output folder before resuming (untrusted rows, leftover temporaries)."""


@dataclass(frozen=True)
class StudyRunSummary:
    """What :func:`run_study` did (with several processes: this process's share of the plan).

    Attributes
    ----------
    planned
        Images in the plan (all processes).
    already_done
        Images of this process's share found done and trusted (skipped).
    generated
        Images rendered by this process.
    scenes_encoded
        Scene encodings by this process.
    untrusted
        Reason -> manifest rows of this share not trusted, whose images were rendered again
        (:func:`~metamergen.study.manifest.check_manifest`).
    repairs
        Other repairs of the manifest files, one sentence each.
    temporaries_removed
        Leftover temporary files of interrupted writes removed from the output folders.
    """

    planned: int
    already_done: int
    generated: int
    scenes_encoded: int
    untrusted: Mapping[str, int] = field(default_factory=dict)
    repairs: tuple[str, ...] = ()
    temporaries_removed: int = 0


def resume_messages(
    out_dir: str | os.PathLike, untrusted: Mapping[str, int], repairs: Sequence[str], temporaries_removed: int
) -> list[str]:
    """The lines that say what was repaired in ``out_dir`` before resuming (none if nothing was).

    Parameters
    ----------
    out_dir
        The study folder.
    untrusted, repairs, temporaries_removed
        As in :class:`StudyRunSummary` (summed over processes, for one line per study).

    Returns
    -------
    list of str
        At most two lines: leftover temporaries removed; rows not trusted (counts by reason) and repairs.
    """
    lines = []
    if temporaries_removed:
        lines.append(
            f"{out_dir}: removed {temporaries_removed} leftover temporary file(s) (.<name>.<8 characters>.tmp) "
            "of writes interrupted by a kill."
        )
    n = sum(untrusted.values())
    if n or repairs:
        reasons = ", ".join(f"{reason}: {k}" for reason, k in sorted(untrusted.items(), key=lambda kv: (-kv[1], kv[0])))
        head = (
            f"{n} manifest row(s) not trusted, so those images are rendered again and their rows replaced ({reasons})"
        )
        lines.append(f"{out_dir}: {'; '.join(([head] if n else []) + list(repairs))}.")
    return lines


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
    their rows appended to the manifest.

    Before anything is rendered, the temporaries an interrupted (killed) atomic write left in
    ``out_dir`` and its ``images`` folder are removed, and the manifest is checked
    (:func:`~metamergen.study.manifest.check_manifest`): a job is skipped only if a row records
    exactly its inputs and its PNG decodes completely; the others are rendered again and their stale
    rows replaced. Each repair is reported by one :class:`StudyResumeWarning` line (rows counted by
    reason), per process with several.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline` (anything with ``encode_scene`` and the
        same call signature).
    jobs
        From :func:`plan_study`.
    out_dir
        Output folder, created with the first finished image: a run that fails before any image is
        finished leaves no folder behind (a resume needs nothing from it).
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
    rank, ranks = int(process_index), int(num_processes)
    scene_order = list(dict.fromkeys(j.scene for j in jobs))  # plan order, the same in every process
    mine = {scene for k, scene in enumerate(scene_order) if k % ranks == rank}
    my_jobs = [j for j in jobs if j.scene in mine]
    manifest = out_dir / (MANIFEST_NAME if ranks == 1 else part_name(rank))
    removed = _remove_leftover_temporaries(out_dir, jobs, my_jobs, rank, ranks)
    # With several processes each checks its own scenes' rows and rewrites only its own part (the
    # others may be appending to theirs); merge_manifest drops the stale rows left elsewhere.
    check = check_manifest(
        out_dir, {j.image_id: j.record() for j in my_jobs}, rewrite=None if ranks == 1 else [manifest]
    )
    pending = [j for j in my_jobs if j.image_id not in check.done]
    share = "" if ranks == 1 else f" (process {rank} of {ranks}, its scenes)"
    for line in resume_messages(f"{out_dir}{share}", check.untrusted, check.notes, removed):
        warnings.warn(line, StudyResumeWarning, stacklevel=2)
    by_scene: dict[tuple[str, float], list[StudyJob]] = {}
    for job in pending:
        by_scene.setdefault((job.scene, job.peripheral_blur), []).append(job)
    # No folder is made up front: the first finished image makes images/ (atomic_write), so a run that
    # fails before rendering anything leaves nothing behind.
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
    if ranks == 1:
        merge_manifest(out_dir, [j.image_id for j in jobs], expected={j.image_id: j.record() for j in jobs})
    return StudyRunSummary(
        planned=len(jobs),
        already_done=len(my_jobs) - len(pending),
        generated=generated,
        scenes_encoded=len(by_scene),
        untrusted=dict(check.untrusted),
        repairs=tuple(check.notes),
        temporaries_removed=removed,
    )


def _remove_leftover_temporaries(
    out_dir: Path, jobs: Sequence[StudyJob], my_jobs: Sequence[StudyJob], rank: int, ranks: int
) -> int:
    """Remove atomic_write's leftovers from ``out_dir`` and its images folder; returns how many.

    Each process removes only the temporaries of files it alone writes in this run (its scenes'
    PNGs, its manifest part), so that it never deletes one another process is writing right now;
    process 0 also removes those of files no process writes in this run (other studies' PNGs, the
    manifest, parts of ranks that do not run).
    """
    if ranks == 1:
        return remove_temporaries(out_dir) + remove_temporaries(out_dir / IMAGES_DIR)
    own_images = {Path(j.path).name for j in my_jobs}
    busy_images = {Path(j.path).name for j in jobs}
    busy_parts = {part_name(k) for k in range(ranks)}
    return remove_temporaries(
        out_dir, owned=lambda name: name == part_name(rank) or (rank == 0 and name not in busy_parts)
    ) + remove_temporaries(
        out_dir / IMAGES_DIR, owned=lambda name: name in own_images or (rank == 0 and name not in busy_images)
    )
