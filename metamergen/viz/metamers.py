"""Figures and the report of a model-metamers run (``metamergen model-metamers``'s output folder).

- :func:`plot_recognition_by_layer`: accuracy on each layer's metamers, one line per recognising
  model, with its bootstrap interval, layers in the order they were given (shallow to deep);
- :func:`metamer_sheet`: one row per natural image, its metamers of each layer beside it;
- :func:`write_metamers_report`: ``OUT/report/`` with both and a per-layer table (mean loss,
  recognition, null-test passes), built in a sibling folder and swapped in whole.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from metamergen.utils.images import load_image
from metamergen.utils.io import replace_dir
from metamergen.utils.plotting import figure_classes

__all__ = ["metamer_sheet", "plot_recognition_by_layer", "write_metamers_report"]

REPORT_DIR = "report"


def plot_recognition_by_layer(
    rows: Sequence[Mapping[str, Any]],
    layers: Sequence[str],
    path: str | os.PathLike,
    *,
    chance: float | None = None,
    title: str = "Recognition of model metamers by layer",
) -> Path:
    """Accuracy (0-1) on each layer's metamers, one line per model, with 95 % interval bars.

    Parameters
    ----------
    rows
        ``model``, ``layer``, ``accuracy``, ``ci_low``, ``ci_high`` (as ``recognition.csv`` and
        :meth:`metamergen.metamers.Recognition.to_dict` have them).
    layers
        The x axis, in order (rows of other layers are ignored).
    path
        The PNG to write.
    chance
        Draw chance accuracy as a dashed line (e.g. ``1 / n_classes``).
    """
    Figure, FigureCanvas = figure_classes()
    fig = Figure(figsize=(max(4.5, 1.1 * len(layers) + 2.5), 3.6), dpi=120)
    FigureCanvas(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = {layer: i for i, layer in enumerate(layers)}
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    for k, model in enumerate(models):
        mine = sorted(
            (r for r in rows if str(r["model"]) == model and str(r["layer"]) in x), key=lambda r: x[str(r["layer"])]
        )
        xs = [x[str(r["layer"])] + (k - (len(models) - 1) / 2) * 0.06 for r in mine]  # a nudge so bars don't overlap
        acc = [float(r["accuracy"]) for r in mine]
        low = [a - float(r["ci_low"]) if _finite(r["ci_low"]) else 0.0 for a, r in zip(acc, mine)]
        high = [float(r["ci_high"]) - a if _finite(r["ci_high"]) else 0.0 for a, r in zip(acc, mine)]
        ax.errorbar(xs, acc, yerr=[low, high], marker="o", capsize=3, label=model)
    if chance is not None:
        ax.axhline(chance, color="0.5", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers], rotation=30 if len(layers) > 5 else 0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("layer whose activations the metamer matches (shallow → deep)")
    ax.set_ylabel("accuracy on the metamers")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def metamer_sheet(
    originals: Sequence[Image.Image],
    metamers: Sequence[Sequence[Image.Image]],
    layers: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    cell: int = 128,
) -> Image.Image:
    """A grid: one row per natural image, the image then its metamer of each layer.

    Parameters
    ----------
    originals
        The natural images.
    metamers
        ``metamers[i][j]``: image ``i``'s metamer of ``layers[j]``.
    layers
        Column headers after "natural".
    names
        Row labels (default: image numbers).
    cell
        Side of each square cell in pixels (images are resized to it, nearest neighbour when enlarged).
    """
    names = list(names or [str(i) for i in range(len(originals))])
    label_w, head, pad = 90, 22, 4
    cols = 1 + len(layers)
    sheet = Image.new("RGB", (label_w + cols * (cell + pad) + pad, head + len(originals) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(["natural", *layers]):
        draw.text((label_w + pad + j * (cell + pad), 5), str(text)[: cell // 6], fill=(0, 0, 0))
    for i, (original, row) in enumerate(zip(originals, metamers)):
        y = head + pad + i * (cell + pad)
        draw.text((4, y + cell // 2 - 6), names[i][:14], fill=(0, 0, 0))
        for j, image in enumerate([original, *row]):
            rgb = image.convert("RGB")
            resample = Image.Resampling.NEAREST if rgb.width < cell else Image.Resampling.BICUBIC
            sheet.paste(rgb.resize((cell, cell), resample), (label_w + pad + j * (cell + pad), y))
    return sheet


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_metamers_report(out: str | os.PathLike, *, chance: float | None = None, max_images: int = 8) -> Path:
    """``out/report/``: ``index.html``, ``recognition_by_layer.png`` and ``metamers.png`` of a finished run.

    Parameters
    ----------
    out
        A ``metamergen model-metamers`` output folder (``manifest.jsonl``, ``summary.json``,
        ``recognition.csv``, optionally ``null_test.csv``).
    chance
        Chance accuracy for the figure's dashed line.
    max_images
        Rows of the sheet (the first images of the run).

    Returns
    -------
    Path
        The report folder. It is written in a temporary sibling and renamed into place, so a
        reader never sees half of it.
    """
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    layers = list(summary["layers"])
    recognition = _read_csv(out / "recognition.csv")
    ids = list(dict.fromkeys(r["source_id"] for r in manifest))[:max_images]
    by_key = {(r["source_id"], r["layer"]): r for r in manifest}
    originals = [load_image(by_key[(i, layers[0])]["scene"]) for i in ids]  # the project's one loader
    metamers = [[Image.open(out / by_key[(i, layer)]["path"]) for layer in layers] for i in ids]

    build = Path(tempfile.mkdtemp(dir=out, prefix=f".{REPORT_DIR}.", suffix=".tmp"))
    try:
        plot_recognition_by_layer(
            recognition,
            layers,
            build / "recognition_by_layer.png",
            chance=chance,
            title=f"{summary['model']}: recognition of its metamers by layer",
        )
        metamer_sheet(originals, metamers, layers, names=ids).save(build / "metamers.png")
        (build / "index.html").write_text(_index_html(summary, layers, len(ids)))
        return replace_dir(build, out / REPORT_DIR)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _pct(v: Any) -> str:
    return f"{100 * float(v):.0f} %" if _finite(v) else "–"


def _index_html(summary: Mapping[str, Any], layers: Sequence[str], n_shown: int) -> str:
    n = summary["n_images"]
    rows = []
    for layer in layers:
        s = summary["layers"][layer]
        rec = s["recognition"]
        passed = f"{s['null_test_passed']} / {n}" if "null_test_passed" in s else "not run"
        rows.append(
            "<tr>"
            f"<td>{html.escape(str(layer))}</td><td>{float(s['mean_loss']):.4g}</td>"
            f"<td>{_pct(rec['accuracy'])} [{_pct(rec['ci_low'])}, {_pct(rec['ci_high'])}]</td>"
            f"<td>{passed}</td></tr>"
        )
    model = html.escape(str(summary["model"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Model metamers: {model}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}img{{max-width:100%}}</style></head>
<body>
<h1>Model metamers of {model}</h1>
<p>{n} natural images, one metamer per image and layer. Recognition: the generating model's accuracy
on the metamers, counting the label it gives the natural image as correct, with a 95 % bootstrap
interval over images. Null test: a metamer passes when its Spearman ρ, Pearson r and dB SNR to its
target all exceed the maxima over pairs of natural images (Feather et al. 2023).</p>
<table><thead><tr><th>layer</th><th>mean final loss</th><th>recognised by the model [95 % CI]</th>
<th>null test passed</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<h2>Recognition by layer</h2>
<img src="recognition_by_layer.png" alt="accuracy on each layer's metamers with 95 % intervals">
<h2>Metamers</h2>
<p>The first {n_shown} images (rows), natural then one metamer per layer.</p>
<img src="metamers.png" alt="natural images and their metamers of each layer">
</body></html>
"""
