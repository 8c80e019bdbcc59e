"""Study throughput: images per second of a whole study (``metamergen generate``), 1 vs 2 processes.

A small study (``--scenes`` scenes x ``--lists`` fixation lists x ``--prefixes`` x ``--conditions``,
one hypothesis; default 4 x 2 x (1, 2, 3, 5) x (both, peripheral) = 64 images, with ``--tiny``
2 x 2 x (1, 2) x 2 = 16) is written to a temporary folder (synthetic scenes, a scanpath JSON Lines file), and
the random-weight pipeline is saved there and loaded back with :func:`metamergen.loading.load_model`,
as ``metamergen generate --model <folder>`` does. Then three cases render the whole plan into an
empty output folder with :func:`metamergen.study.run_study` (scene encoding, pipeline calls, PNG
writes, manifest appends, manifest merge):

* ``1proc_b1``: one process, ``batch_size=1`` (one image per pipeline call);
* ``1proc_b<B>``: one process, ``batch_size=B`` (``--batch-size``, default 4 as ``generate``'s);
* ``2proc_b<B>``: two worker processes (this script with ``--worker``), rank r running
  ``run_study(process_index=r, num_processes=2)`` (scenes dealt out round-robin) with half the
  torch threads each, then :func:`~metamergen.study.manifest.merge_manifest` in this process. Timed
  as the wall clock of the whole launch, so it **includes** interpreter start-up, imports, model
  loading and planning in every worker. ``2proc_b<B>_render`` is the same run without those: the
  workers wait at a file barrier once loaded and write timestamps, and it spans from the barrier to
  the last worker's ``run_study`` return, plus the merge.

The in-process cases run interleaved with the launch, median of the repeats. After timing, the
merged manifests and PNGs of cases 2 and 3 are compared with case 1's (``same_image_ids``,
``manifest_identical``, ``max_abs_diff_vs_first``, in [0, 1] pixel units), and case 3's with case 2's
(``two_processes_vs_one_at_same_batch``: the same batch size, so the same images are expected).

    python bench/study_throughput.py [--tiny] [--device cuda] [--batch-size 4] [--steps 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

NAME = "study_throughput"
#: How the plan names the model (recorded in the manifest, part of every image_id): a fixed label,
#: so that the ids do not depend on the temporary folder the pipeline was saved to.
MODEL_LABEL = "bench-random-weights"
#: Seconds a worker waits at the barrier for the other before giving up.
BARRIER_TIMEOUT = 3600.0


def build_parser() -> argparse.ArgumentParser:
    """The command line: benchlib's shared options plus the study's shape."""
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=3, warmup=1)
    p.add_argument(
        "--scenes",
        type=int,
        default=None,
        help="scene images (default 4, with --tiny 2: an even split over 2 processes)",
    )
    p.add_argument("--lists", type=int, default=2, help="fixation lists per scene (default 2)")
    p.add_argument(
        "--prefixes", type=int, nargs="+", default=None, help="fixation prefixes (default 1 2 3 5; with --tiny 1 2)"
    )
    p.add_argument(
        "--conditions", nargs="+", default=["both", "peripheral"], help="study conditions (default both peripheral)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="run_study's batch_size in the batched cases (default 4)")
    p.add_argument(
        "--steps", type=int, default=4, help="DDIM steps per image (default 4, for speed; the paper uses 50)"
    )
    p.add_argument(
        "--scene-size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"), help="scene image size in pixels"
    )
    return p


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No diffusers / transformers progress bars while saving and loading; restored afterwards."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    before = dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        yield
    finally:  # this process may go on to run other benchmarks (run_all.py --in-process)
        if before[0]:
            dlogging.enable_progress_bar()
        if before[1]:
            tlogging.enable_progress_bar()


# ----------------------------------------------------------------------------- study inputs


def write_study_inputs(root: Path, args: argparse.Namespace, width: int, height: int) -> Path:
    """Synthetic scenes and a scanpath file under ``root``; returns the scanpath file.

    Parameters
    ----------
    root
        Folder to write ``images/*.png``, ``scanpaths.jsonl`` and ``dataset.json`` into.
    args
        The parsed options (``scenes``, ``lists``, ``prefixes``, ``seed``).
    width, height
        Scene size in pixels.

    Returns
    -------
    Path
        The ``scanpaths.jsonl`` file, for :func:`metamergen.study.load_scanpath_scenes`.
    """
    from metamergen.fixations.io import DatasetInfo, write_scanpaths
    from metamergen.fixations.records import Scanpath

    (root / "images").mkdir(parents=True, exist_ok=True)
    per_list = max(args.prefixes)  # every list long enough for every prefix: none is skipped
    scanpaths = []
    for k in range(args.scenes):
        name = f"scene{k:02d}.png"
        bl.synthetic_scene(width, height, seed=args.seed + k).save(root / "images" / name)
        lists = bl.random_fixation_lists(args.lists, width, height, seed=args.seed + k, per_list=(per_list,))
        for j, xy in enumerate(lists):
            scanpaths.append(
                Scanpath.from_points(xy, width=width, height=height, image=name, id=f"s{k}-l{j}", subject="bench")
            )
    return write_scanpaths(root / "scanpaths.jsonl", scanpaths, DatasetInfo(image_root="images"))


def study_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~metamergen.study.StudySettings` fields, as JSON (also handed to the workers)."""
    return {
        "prefixes": list(args.prefixes),
        "conditions": list(args.conditions),
        "hypotheses": 1,
        "seed": args.seed,
        "steps": args.steps,
    }


def plan(pipe: Any, scanpaths: Path, settings: dict[str, Any], dtype: str) -> list[Any]:
    """The study's jobs, planned exactly as ``metamergen generate`` does (in every process alike)."""
    from metamergen.study import StudySettings, load_scanpath_scenes, plan_study

    scenes = load_scanpath_scenes(scanpaths)
    return plan_study(scenes, StudySettings(**settings), model=MODEL_LABEL, dtype=dtype, pipe=pipe)


def thread_split(total: int, processes: int) -> list[int]:
    """Torch threads per process summing to ``total`` (at least 1 each, so more when total < processes)."""
    return [max(1, total // processes + (1 if r < total % processes else 0)) for r in range(processes)]


# ----------------------------------------------------------------------------- worker process


def worker(config_path: str) -> None:
    """One rank of the 2-process case: load, plan, wait for the other rank, render its share.

    Parameters
    ----------
    config_path
        JSON written by :func:`launch`: ``model_dir``, ``scanpaths``, ``settings``, ``out_dir``,
        ``rank``, ``num_processes``, ``threads``, ``device``, ``dtype``, ``batch_size``,
        ``barrier_dir``, ``result``. The timestamps (``time.time()``, comparable across processes)
        go to ``result``.
    """
    t_start = time.time()  # after interpreter start-up and this module's imports (torch)
    cfg = json.loads(Path(config_path).read_text())
    torch.set_num_threads(int(cfg["threads"]))
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    from metamergen.loading import load_model
    from metamergen.study import run_study

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    t_imported = time.time()
    with quiet_loading():
        pipe = load_model(model=cfg["model_dir"], device=cfg["device"], dtype=cfg["dtype"]).pipe
    pipe.set_progress_bar_config(disable=True)
    jobs = plan(pipe, Path(cfg["scanpaths"]), cfg["settings"], cfg["dtype"])
    t_loaded = time.time()
    # A file barrier (as accelerate's wait_for_everyone): rendering starts once every rank has
    # loaded, so the render span measures rendering only, not one rank rendering while the other loads.
    barrier = Path(cfg["barrier_dir"])
    (barrier / f"ready-{cfg['rank']}").touch()
    while len(list(barrier.glob("ready-*"))) < int(cfg["num_processes"]):
        if time.time() - t_loaded > BARRIER_TIMEOUT:
            raise SystemExit(f"rank {cfg['rank']}: the other ranks never got ready.")
        time.sleep(0.002)
    t_ready = time.time()
    summary = run_study(
        pipe,
        jobs,
        cfg["out_dir"],
        batch_size=int(cfg["batch_size"]),
        progress=False,
        process_index=int(cfg["rank"]),
        num_processes=int(cfg["num_processes"]),
    )
    t_done = time.time()  # no device sync needed: the last PNG was written from host memory
    result = {
        "rank": cfg["rank"],
        "threads": torch.get_num_threads(),
        "generated": summary.generated,
        "scenes_encoded": summary.scenes_encoded,
        "t_start": t_start,
        "t_imported": t_imported,
        "t_loaded": t_loaded,
        "t_ready": t_ready,
        "t_done": t_done,
    }
    Path(cfg["result"]).write_text(json.dumps(result))


def launch(
    run_dir: Path,
    out_dir: Path,
    common: dict[str, Any],
    threads: Sequence[int],
    device: torch.device,
    order: Sequence[str],
) -> dict[str, Any]:
    """Start one worker per rank, wait for all, merge their manifest parts (as ``generate``'s main rank).

    Parameters
    ----------
    run_dir
        Empty folder for the workers' configs, logs, results and barrier files.
    out_dir
        The study output folder (empty).
    common
        Config shared by every rank (model folder, scanpaths, settings, dtype, batch size).
    threads
        Torch threads of each rank (its length is the number of processes).
    device
        ``cuda`` gives rank r ``cuda:r`` when there are that many GPUs, else they share one.
    order
        The plan's image_ids, for :func:`~metamergen.study.manifest.merge_manifest`.

    Returns
    -------
    dict
        ``t_launch``, ``t_exited``, ``t_merged`` (``time.time()``) and each rank's result.
    """
    from metamergen.study.manifest import merge_manifest

    n = len(threads)
    barrier = run_dir / "barrier"
    barrier.mkdir(parents=True)
    procs, logs = [], []
    t_launch = time.time()
    for rank, t in enumerate(threads):
        dev = str(device)
        if device.type == "cuda" and torch.cuda.device_count() > rank:
            dev = f"cuda:{rank}"
        cfg = dict(
            common,
            out_dir=str(out_dir),
            rank=rank,
            num_processes=n,
            threads=t,
            device=dev,
            barrier_dir=str(barrier),
            result=str(run_dir / f"result-{rank}.json"),
        )
        cfg_path = run_dir / f"worker-{rank}.json"
        cfg_path.write_text(json.dumps(cfg))
        env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        # Output to files, not pipes: a worker blocked on a full pipe would hold the other at the barrier.
        log_file = open(run_dir / f"worker-{rank}.log", "w")
        logs.append(log_file)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(cfg_path)]
        procs.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env))
    try:
        # Polled, not waited on in turn: a failed rank must not leave the other waiting at the barrier.
        while any(p.poll() is None for p in procs) and all(p.poll() in (None, 0) for p in procs):
            time.sleep(0.005)
    finally:
        failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
        for p in procs:
            if p.poll() is None:  # only when another rank failed (or on an interrupt)
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    t_exited = time.time()
    if failed:
        tail = (run_dir / f"worker-{failed[0]}.log").read_text()[-3000:]
        raise RuntimeError(f"study worker rank {failed[0]} failed (exit code {procs[failed[0]].returncode}):\n{tail}")
    merge_manifest(out_dir, order)
    t_merged = time.time()
    results = [json.loads((run_dir / f"result-{r}.json").read_text()) for r in range(n)]
    return {"t_launch": t_launch, "t_exited": t_exited, "t_merged": t_merged, "workers": results}


# ----------------------------------------------------------------------------- comparison


def compare(base: Path, other: Path) -> dict[str, Any]:
    """Manifest and pixels of the study folder ``other`` against ``base``.

    Returns
    -------
    dict
        ``same_image_ids`` (same ids in the same order), ``manifest_identical`` (byte for byte),
        ``max_abs_diff`` (PNG pixels in [0, 1] over the ids both hold; 1/255 is one 8-bit level).
    """
    from PIL import Image

    from metamergen.study.manifest import MANIFEST_NAME, read_manifest

    a, b = read_manifest(base / MANIFEST_NAME), read_manifest(other / MANIFEST_NAME)
    ids_a, ids_b = [r["image_id"] for r in a], [r["image_id"] for r in b]
    paths = {r["image_id"]: r["path"] for r in b}
    diff = 0.0
    for row in a:
        if row["image_id"] in paths:
            with Image.open(base / row["path"]) as x, Image.open(other / paths[row["image_id"]]) as y:
                xa = np.asarray(x.convert("RGB"), dtype=np.float32) / 255.0
                ya = np.asarray(y.convert("RGB"), dtype=np.float32) / 255.0
            diff = max(diff, float(np.abs(xa - ya).max()) if xa.shape == ya.shape else float("inf"))
    return {
        "same_image_ids": ids_a == ids_b,
        "manifest_identical": (base / MANIFEST_NAME).read_bytes() == (other / MANIFEST_NAME).read_bytes(),
        "max_abs_diff": diff,
        "images": len(ids_b),
    }


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON (``--out``)."""
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    if args.scenes is None:
        args.scenes = 2 if args.tiny else 4
    if args.prefixes is None:
        args.prefixes = [1, 2] if args.tiny else [1, 2, 3, 5]
    if args.batch_size < 2:
        raise SystemExit("--batch-size must be >= 2 (the batch-1 case is always measured).")
    if args.scenes < 2:
        raise SystemExit("--scenes must be >= 2: the two processes split the study by scene.")
    from metamergen.loading import load_model
    from metamergen.study import run_study

    width, height = (64, 48) if args.tiny else args.scene_size
    threads = torch.get_num_threads()
    split = thread_split(threads, 2)
    b = args.batch_size
    cases = ("1proc_b1", f"1proc_b{b}", f"2proc_b{b}")
    render_case = f"2proc_b{b}_render"
    with tempfile.TemporaryDirectory(prefix="metamergen-bench-study-") as tmp:
        root = Path(tmp)
        scanpaths = write_study_inputs(root / "inputs", args, width, height)
        bl.log(f"[{NAME}] building the {'tiny' if args.tiny else 'SD1.5-size'} pipeline and saving it to {root}")
        comp = bl.build_components(args.tiny, device, dtype, seed=args.seed)
        models = comp.describe()
        with quiet_loading():
            comp.pipeline().save_pretrained(root / "model")
            del comp  # every case loads the saved folder, as `metamergen generate --model` does
            pipe = load_model(model=str(root / "model"), device=str(device), dtype=args.dtype).pipe
        pipe.set_progress_bar_config(disable=True)
        settings = study_settings(args)
        jobs = plan(pipe, scanpaths, settings, args.dtype)
        order = [j.image_id for j in jobs]
        n = len(jobs)
        common = {
            "model_dir": str(root / "model"),
            "scanpaths": str(scanpaths),
            "settings": settings,
            "dtype": args.dtype,
            "batch_size": b,
        }
        current: dict[str, Path] = {}
        counter = itertools.count()
        launches: list[dict[str, Any]] = []

        def fresh(case: str) -> None:
            # run_study skips what a folder already holds: every call renders into an empty one.
            if case in current:
                shutil.rmtree(current[case].parent if case == cases[2] else current[case])
            k = next(counter)
            current[case] = root / f"run-{k}" / "out" if case == cases[2] else root / f"out-{k}"

        def in_process(batch_size: int, case: str) -> None:
            run_study(pipe, jobs, current[case], batch_size=batch_size, progress=False)

        def two_processes() -> None:
            out = current[cases[2]]
            launches.append(launch(out.parent, out, common, split, device, order))

        fns = {
            cases[0]: lambda: in_process(1, cases[0]),
            cases[1]: lambda: in_process(b, cases[1]),
            cases[2]: two_processes,
        }
        bl.log(
            f"[{NAME}] {n} images ({args.scenes} scenes x {args.lists} lists x {len(args.prefixes)} prefixes x "
            f"{len(args.conditions)} conditions), {args.steps} steps, {threads} thread(s) in-process, "
            f"workers {split}, {args.repeats} interleaved repeats"
        )
        # No inference_mode here: run_study is timed as `generate` calls it (the workers do the same).
        times = bl.interleaved(
            fns,
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
            before={c: (lambda c=c: fresh(c)) for c in cases},
            log=bl.log,
        )
        timed = launches[args.warmup :]
        render = [max(w["t_done"] for w in r["workers"]) - min(w["t_ready"] for w in r["workers"]) for r in timed]
        render = [t + (r["t_merged"] - r["t_exited"]) for t, r in zip(render, timed)]  # plus the merge
        startup = [max(w["t_ready"] for w in r["workers"]) - r["t_launch"] for r in timed]
        phases = {  # start-up by phase, over repeats and ranks (worker timestamps)
            "python_and_torch_import": [w["t_start"] - r["t_launch"] for r in timed for w in r["workers"]],
            "diffusers_and_metamergen_import": [w["t_imported"] - w["t_start"] for r in timed for w in r["workers"]],
            "model_load_and_plan": [w["t_loaded"] - w["t_imported"] for r in timed for w in r["workers"]],
        }
        phases = {k: bl.median(v) for k, v in phases.items()}
        checks = {c: compare(current[cases[0]], current[c]) for c in cases}
        # The claim run_study makes: the same images whatever the process count, at the same batch size.
        same_batch = compare(current[cases[1]], current[cases[2]])

    all_times = {**times, render_case: render}
    med = {c: bl.median(t) for c, t in all_times.items()}
    ips = {c: n / med[c] for c in all_times}
    ratios = {c: ips[c] / ips[cases[0]] for c in all_times}
    vs_batched = {c: ips[c] / ips[cases[1]] for c in all_times}
    diffs = {c: checks[c]["max_abs_diff"] for c in cases}
    check_of = {**{c: checks[c] for c in cases}, render_case: checks[cases[2]]}
    labels = {
        cases[0]: "1 process, batch 1",
        cases[1]: f"1 process, batch {b}",
        cases[2]: f"2 processes, batch {b}: wall clock of the launch",
        render_case: f"2 processes, batch {b}: rendering only",
    }
    procs = {c: f"1 x {threads}" for c in cases[:2]} | {c: " + ".join(map(str, split)) for c in cases[2:]}
    procs[render_case] = procs[cases[2]]
    rows = [
        [
            labels[c],
            procs[c],
            f"{med[c]:.2f}",
            f"{ips[c]:.2f}",
            bl.fmt_x(ratios[c]),
            bl.fmt_x(vs_batched[c]),
            "yes" if check_of[c]["same_image_ids"] else "NO",
            f"{check_of[c]['max_abs_diff']:.1e}",
        ]
        for c in all_times
    ]
    notes = [
        f"plan: {args.scenes} scenes x {args.lists} lists x prefixes {args.prefixes} x conditions {args.conditions}, "
        f"1 hypothesis = {n} images at {jobs[0].width}x{jobs[0].height} px from {width}x{height} scenes, "
        f"{args.steps} DDIM step(s) (CFG++), PNGs written",
        "1 process: one run_study call into an empty folder (scene encoding, pipeline calls, PNG writes, manifest "
        "appends and merge); the pipeline is loaded once beforehand",
        "2 processes, wall clock: from starting both workers to the merged manifest, so it includes each worker's "
        f"interpreter start-up, imports, model loading from disk and planning (median {bl.median(startup):.2f} s "
        "from the launch to both workers ready; per worker: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in phases.items())
        + ")",
        "2 processes, rendering only: from both workers ready (a file barrier) to the last run_study return, "
        "from the workers' own timestamps, plus the merge",
        f"threads: {threads} in-process; {' + '.join(map(str, split))} in the 2 workers"
        + (
            ""
            if sum(split) == threads
            else f" (NOT equal: {threads} thread(s) cannot be split over 2 processes, so the 2-process case has more)"
        ),
        f"run_study batches images of one scene that share call settings: a condition is its own group of "
        f"{args.lists * len(args.prefixes)} images here, so batch {b} gives calls of up to "
        f"{min(b, args.lists * len(args.prefixes))}",
        f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up round(s); last two columns: the "
        "merged manifest's ids and the PNGs (in [0, 1]; 1/255 = 3.9e-03 is one 8-bit level) against batch 1 in one "
        "process",
        f"2 processes vs 1 process, both at batch {b}: same image ids {'yes' if same_batch['same_image_ids'] else 'NO'}, "
        f"manifest byte-identical {'yes' if same_batch['manifest_identical'] else 'NO'}, "
        f"max abs pixel diff {same_batch['max_abs_diff']:.1e}",
    ]
    table = bl.make_table(
        f"Study throughput, 1 vs 2 processes ({'tiny' if args.tiny else 'SD1.5'}, {n} images, {args.dtype}, {device.type})",
        [
            "case",
            "threads",
            "s / study",
            "images / s",
            "vs 1 process, batch 1",
            f"vs 1 process, batch {b}",
            "same image ids",
            "max abs diff vs batch 1",
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
            images=n,
            scene_size=[width, height],
            output_size=[jobs[0].width, jobs[0].height],
            study_settings=settings,
            threads_in_process=threads,
            threads_per_worker=split,
            models=models,
        ),
        raw_seconds={"wall": times, "worker_timestamps": {render_case: render}},
        median_seconds={"all": med},
        ratios={"all": ratios},
        ratios_vs_batched=vs_batched,
        images_per_second=ips,
        startup_seconds=startup,
        startup_phase_median_seconds=phases,
        worker_timestamps=timed,
        max_abs_diff_vs_first=diffs,
        same_image_ids={c: checks[c]["same_image_ids"] for c in cases},
        manifest_identical={c: checks[c]["manifest_identical"] for c in cases},
        two_processes_vs_one_at_same_batch=same_batch,
        table=table,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
