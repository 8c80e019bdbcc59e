"""``metamergen convert``: eye-tracking exports -> canonical scanpath JSON Lines + ``dataset.json``."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

__all__ = ["add_parser", "run"]

#: What to try when a filter (a ConversionReport reason) dropped every record.
_HINTS = {
    "off-image fixation": "check that --width/--height are the frame the coordinates were recorded in "
    "(COCO: 1680x1050, or 512x320 for the rescaled copies), or pass --off-image clip",
    "initial centre fixation": "--keep-initial-fixation keeps each record's first (forced centre) fixation",
    "length mismatch": "X, Y, T and length disagree in the records: is this the right format?",
    "non-numeric value": "check that the x and y columns hold numbers",
    "non-finite coordinate": "check that the x and y columns hold finite pixel coordinates",
    "invalid time": "check that duration_ms/onset_ms (COCO: T) are non-negative milliseconds",
    "missing image": "fill in the image column",
    "no records": "check that the input is the file you meant",
}


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen convert``: convert, write JSONL + dataset.json, print the report."""
    from metamergen.fixations.converters import COCO_HEIGHT, COCO_WIDTH, CONVERTERS, convert_csv
    from metamergen.fixations.io import DatasetInfo, write_scanpaths

    if (args.width is None) != (args.height is None):
        raise SystemExit(
            "error: give both --width and --height (pixels of the frame the coordinates are in), or neither."
        )
    out = Path(args.out)
    image_root = None
    if args.image_root is not None:  # stored relative to the sidecar's folder when possible
        try:
            image_root = os.path.relpath(Path(args.image_root).resolve(), out.parent.resolve())
        except ValueError:  # another drive on Windows
            image_root = str(Path(args.image_root).resolve())
    try:
        info = DatasetInfo(
            name=args.name or out.stem,
            image_root=image_root,
            pixels_per_degree=args.pixels_per_degree,
            source=f"{args.format}: {args.input}",
        )
        if args.format == "csv":
            if args.keep_initial_fixation or args.image_prefix or args.drop_bar_fixations:
                raise SystemExit(
                    "error: --keep-initial-fixation, --image-prefix and --drop-bar-fixations apply to the COCO formats only."
                )
            sizes = None if args.width is None else defaultdict(lambda: (args.width, args.height))
            scanpaths, report = convert_csv(
                args.input, image_sizes=sizes, image_root=args.image_root, off_image=args.off_image
            )
        else:
            scanpaths, report = CONVERTERS[args.format](
                args.input,
                width=COCO_WIDTH if args.width is None else args.width,
                height=COCO_HEIGHT if args.height is None else args.height,
                drop_initial_fixation=not args.keep_initial_fixation,
                off_image=args.off_image,
                image_prefix=args.image_prefix,
                drop_bar_fixations=args.drop_bar_fixations,
            )
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if not scanpaths:  # an empty file would only fail later, in generate: say now which filter took everything
        hints = [_HINTS[reason] for reason in report.dropped if reason in _HINTS] or [_HINTS["no records"]]
        raise SystemExit(f"error: {report.nothing_kept()}. Nothing was written; {'; '.join(hints)}.")
    info.notes = report.summary()
    write_scanpaths(out, scanpaths, info)
    print(report.summary())
    print(f"Wrote {out} and {out.parent / 'dataset.json'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``convert`` to the command line's subparsers."""
    c = subparsers.add_parser(
        "convert",
        help="convert a fixation dataset to MetamerGen's JSON Lines format",
        description="Convert COCO-FreeView, COCO-Search18 or a generic CSV to scanpath JSON Lines plus a "
        "dataset.json sidecar, and print what was dropped. Coordinates are never rescaled.",
    )
    c.add_argument("format", choices=["coco-freeview", "coco-search18", "csv"], help="input format")
    c.add_argument("input", help="input file (COCO: the JSON list of records; csv: image,subject,x,y[,duration_ms])")
    c.add_argument("--out", required=True, help="output .jsonl file; dataset.json is written beside it")
    c.add_argument(
        "--width",
        type=int,
        default=None,
        help="pixels of the frame the coordinates are in (COCO default 1680; 512 for the rescaled copies); csv: size of every image",
    )
    c.add_argument(
        "--height", type=int, default=None, help="see --width (COCO default 1050; 320 for the rescaled copies)"
    )
    c.add_argument(
        "--keep-initial-fixation",
        action="store_true",
        help="COCO: keep the forced centre fixation (dropped by default when it lies near the frame centre)",
    )
    c.add_argument(
        "--drop-bar-fixations",
        action="store_true",
        help="COCO: drop fixations on the black side bars of the padded frame (x < 140 or x >= 1540 at "
        "1680x1050; kept and counted by default)",
    )
    c.add_argument(
        "--off-image",
        choices=["drop", "clip", "error"],
        default="drop",
        help="fixations outside the image (default drop)",
    )
    c.add_argument(
        "--image-root",
        default=None,
        help="folder holding the images (recorded in dataset.json; csv: read for image sizes)",
    )
    c.add_argument(
        "--image-prefix",
        default=None,
        help="COCO: folder prepended to each image name; Search18 may use {task}, {condition}",
    )
    c.add_argument(
        "--pixels-per-degree",
        type=float,
        default=None,
        help="image pixels per degree of visual angle in the experiment",
    )
    c.add_argument("--name", default=None, help="dataset name (default: the output file's stem)")
    c.set_defaults(func=run)
    return c
