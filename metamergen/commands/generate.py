"""``metamergen generate``: a study's hypotheses and manifest, resumably (see :mod:`metamergen.study`)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from metamergen.commands._common import (
    add_model_arguments,
    add_sampling_arguments,
    check_model_choice,
    check_sampling_arguments,
    load_pipeline_from_args,
    process_state,
)
from metamergen.utils.distributed import leave_process_group

if TYPE_CHECKING:  # the command module imports nothing heavy until it runs
    from metamergen.study import StudyScene, StudySettings

__all__ = ["add_parser", "main", "run"]


def _parse_prefixes(text: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            out.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise SystemExit(
                f"error: --prefixes takes comma-separated counts or 'all' (e.g. 1,2,3,5,10), got {text!r}."
            ) from None
        if value < 0:
            raise SystemExit(f"error: --prefixes must be >= 0, got {value}.")
        out.append(value)
    if not out:
        raise SystemExit("error: --prefixes is empty.")
    return tuple(out)


def _check_something_to_render(scenes: Sequence[StudyScene], settings: StudySettings, prefixes_text: str) -> None:
    """Stop before the model is loaded when the plan would be empty: every prefix longer than every list.

    Parameters
    ----------
    scenes
        The loaded :class:`~metamergen.study.StudyScene` list (never empty: the loaders refuse that).
    settings
        The :class:`~metamergen.study.StudySettings`.
    prefixes_text
        ``--prefixes`` as given, for the message.
    """
    lengths = [len(scanpath) for scene in scenes for _, scanpath in scene.lists]
    if lengths and all(p is not None and p > max(lengths) for p in settings.prefixes):
        raise SystemExit(
            f"error: nothing to render: every --prefixes value ({prefixes_text}) is longer than every fixation "
            f"list (the longest has {max(lengths)} fixation(s)), so all {len(lengths) * len(settings.prefixes)} "
            "(list, prefix) combinations were skipped. Pass smaller prefixes, or 'all' for the whole list."
        )


def _add_generate_arguments(g: argparse.ArgumentParser) -> None:
    inputs = g.add_argument_group("input (one of)")
    inputs.add_argument(
        "--scanpaths", help="canonical scanpath .jsonl; images are found through its dataset.json or --image-root"
    )
    inputs.add_argument("--image", help="one scene image, with --fixations")
    g.add_argument(
        "--fixations",
        help="with --image: a .json file holding [[x, y], ...] in pixels of the image ([] = periphery only)",
    )
    g.add_argument(
        "--image-root", default=None, help="folder the scanpaths' image fields are relative to (overrides dataset.json)"
    )
    g.add_argument("--out", required=True, help="output folder (images/ and manifest.jsonl); re-running resumes")
    g.add_argument(
        "--prefixes",
        default="all",
        help="first-N fixation counts, comma-separated, 'all' = whole list (paper: 1,2,3,5,10; default all); longer than a list: skipped and counted",
    )
    g.add_argument("--hypotheses", type=int, default=1, help="images per list, prefix and condition (default 1)")
    g.add_argument("--seed", type=int, default=0, help="base seed; each image's seed derives from it (see --noise)")
    g.add_argument(
        "--noise",
        choices=["paired", "independent"],
        default="paired",
        help="paired (default): one initial noise per scene, list and hypothesis, shared by every condition, "
        "fixation source and prefix (common random numbers for paired comparisons); independent: one per image",
    )
    g.add_argument(
        "--conditions",
        default="both",
        help="comma-separated: both, peripheral, foveal (the other stream dropped as in training, = peripheral:dropped, "
        "foveal:dropped), peripheral:off, foveal:off (the other stream's scale 0); default both",
    )
    g.add_argument(
        "--random-control", action="store_true", help="also render matched random fixations (same counts, seeded)"
    )
    g.add_argument(
        "--height",
        type=int,
        default=None,
        help="output height in pixels (with --width; default: scene aspect at the UNet's native area)",
    )
    g.add_argument("--width", type=int, default=None, help="output width in pixels (with --height)")
    g.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_arguments(g)
    add_model_arguments(g)


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen generate``."""
    from metamergen.study import (
        MANIFEST_NAME,
        SKIPPED_PREFIX,
        StudySettings,
        load_fixation_list_scene,
        load_scanpath_scenes,
        plan_study,
        run_study,
    )
    from metamergen.study.manifest import merge_manifest
    from metamergen.study.run import StudyResumeWarning, resume_messages

    if bool(args.scanpaths) == bool(args.image):
        raise SystemExit(
            "error: give the input as --scanpaths file.jsonl, or as --image img --fixations list.json (one of them)."
        )
    if args.image and args.fixations is None:
        raise SystemExit(
            "error: --image needs --fixations list.json ([[x, y], ...] in image pixels; [] for periphery only)."
        )
    if args.scanpaths and (args.fixations is not None):
        raise SystemExit("error: --fixations goes with --image; a --scanpaths file holds its own fixations.")
    if args.image and args.image_root is not None:
        raise SystemExit("error: --image-root goes with --scanpaths.")
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {args.batch_size}.")
    check_model_choice(args)
    check_sampling_arguments(args)
    if (args.height is None) != (args.width is None):
        raise SystemExit("error: give --height and --width together (or neither: the scene's aspect ratio).")
    if args.height is not None and (args.height < 8 or args.width < 8):
        raise SystemExit(f"error: --height and --width must be at least 8 pixels, got {args.height} x {args.width}.")
    try:
        settings = StudySettings(
            prefixes=_parse_prefixes(args.prefixes),
            hypotheses=args.hypotheses,
            conditions=tuple(c.strip() for c in args.conditions.split(",") if c.strip()),
            random_control=args.random_control,
            noise=args.noise,
            seed=args.seed,
            foveal_scale=args.foveal_scale,
            peripheral_scale=args.peripheral_scale,
            peripheral_blur=args.peripheral_blur,
            guidance=args.guidance,
            guidance_scale=args.guidance_scale,
            steps=args.steps,
            height=args.height,
            width=args.width,
        )
        report: Counter = Counter()
        if args.scanpaths:
            scenes = load_scanpath_scenes(
                args.scanpaths, image_root=args.image_root, off_image=args.off_image, report=report
            )
        else:
            scenes = load_fixation_list_scene(args.image, args.fixations, off_image=args.off_image)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    _check_something_to_render(scenes, settings, args.prefixes)
    state = process_state(args)
    pipe, model, revision = load_pipeline_from_args(args)
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    if args.height is not None and (args.height % factor or args.width % factor):
        raise SystemExit(
            f"error: --height {args.height} --width {args.width}: both must be multiples of {factor} "
            f"(this model's VAE factor), e.g. {args.height // factor * factor} x {args.width // factor * factor}."
        )
    try:
        jobs = plan_study(
            scenes, settings, model=model, model_revision=revision, dtype=args.dtype, pipe=pipe, report=report
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    lists = sum(len(s.lists) for s in scenes)
    main_process = state is None or state.is_main_process
    if main_process:
        print(f"Study: {len(scenes)} scene(s), {lists} fixation list(s) -> {len(jobs)} image(s).", file=sys.stderr)
    if report[SKIPPED_PREFIX] and main_process:
        print(
            f"Skipped {report[SKIPPED_PREFIX]} (list, prefix) combination(s) whose prefix is longer than the list "
            f"(--prefixes {args.prefixes}).",
            file=sys.stderr,
        )
    split = {} if state is None else {"process_index": state.process_index, "num_processes": state.num_processes}
    with warnings.catch_warnings():
        if state is not None:  # each process warns for its share; the main process says it once below
            warnings.simplefilter("ignore", StudyResumeWarning)
        summary = run_study(
            pipe, jobs, args.out, batch_size=args.batch_size, progress=not args.no_progress and main_process, **split
        )
    generated, already = summary.generated, summary.already_done
    if state is not None:  # every part is complete: one process folds them into manifest.jsonl
        from accelerate.utils import gather_object

        shares = gather_object([summary])
        generated, already = sum(s.generated for s in shares), sum(s.already_done for s in shares)
        state.wait_for_everyone()
        if state.is_main_process:
            untrusted: Counter = Counter()
            for share in shares:
                untrusted.update(share.untrusted)
            for line in resume_messages(
                args.out,
                untrusted,
                [note for share in shares for note in share.repairs],
                sum(s.temporaries_removed for s in shares),
            ):
                print(f"warning: {line}", file=sys.stderr)
            merge_manifest(Path(args.out), [j.image_id for j in jobs], expected={j.image_id: j.record() for j in jobs})
        state.wait_for_everyone()
        leave_process_group()
        if not state.is_main_process:
            return 0
    print(f"Generated {generated} image(s), {already} already done; manifest: {Path(args.out) / MANIFEST_NAME}")
    return 0


_GENERATE_HELP = "render scene hypotheses for a study (fixation lists x prefixes x conditions x hypotheses), resumably"


_GENERATE_DESCRIPTION = (
    "Render scene hypotheses for every fixation list of a scanpath file (or one image + one list), each "
    "scene encoded once. Writes images/<image_id>.png and manifest.jsonl; re-running the same command "
    "skips what is done."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``generate`` to the command line's subparsers."""
    g = subparsers.add_parser("generate", help=_GENERATE_HELP, description=_GENERATE_DESCRIPTION)
    _add_generate_arguments(g)
    g.set_defaults(func=run)
    return g


def main(argv: Sequence[str] | None = None) -> int:
    """``metamergen generate`` as a standalone command (``inference/generate.py``)."""
    parser = argparse.ArgumentParser(prog="generate", description=_GENERATE_DESCRIPTION)
    _add_generate_arguments(parser)
    return run(parser.parse_args(argv))
