"""``metamergen report``: summary statistics, figures, contact sheets, index page, errors."""

from __future__ import annotations

import argparse
import itertools
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metamergen.commands.report import add_parser as add_report_parser
from metamergen.evaluation.statistics import bootstrap_ci, unit_means
from metamergen.viz.figures import foveated_input
from metamergen.viz.report import METRIC_INFO, ReportError, summarize_scores, write_report

SCENES = {"s1": (64, 48), "s2": (56, 56)}


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def make_study(folder: Path, metrics=("dreamsim", "clip", "ssim")) -> Path:
    """2 scenes x 2 conditions x 2 sources x prefixes 1, 2 x 2 hypotheses = 32 rows, tiny PNGs."""
    (folder / "scenes").mkdir(parents=True)
    (folder / "images").mkdir()
    for k, (sid, (w, h)) in enumerate(SCENES.items()):
        _noise(w, h, k).save(folder / "scenes" / f"{sid}.png")
    rows = []
    rng = np.random.default_rng(0)
    for (sid, (w, h)), cond, src, prefix, hyp in itertools.product(
        SCENES.items(), ("both", "peripheral"), ("viewer", "random"), (1, 2), (0, 1)
    ):
        full = [[10.0, 12.0], [w - 9.0, h - 7.0]] if src == "viewer" else [[w / 2, h / 3], [5.0, h - 5.0]]
        image_id = f"{sid}-{cond}-{src}-n{prefix}-h{hyp}"
        _noise(32, 32, len(rows) + 100).save(folder / "images" / f"{image_id}.png")
        row = dict(
            image_id=image_id,
            path=f"images/{image_id}.png",
            scene=f"scenes/{sid}.png",
            scene_id=sid,
            scanpath_id=f"{sid}-subj1",
            subject="subj1",
            prefix=prefix,
            n_fixations=prefix,
            fixations=json.dumps(full[:prefix]),
            fixation_source=src,
            condition=cond,
            hypothesis=hyp,
            seed=hyp,
            foveal_scale=1.2 if cond != "peripheral" else 0.0,
            peripheral_scale=0.7,
            peripheral_blur=0.25,
            guidance="cfg++",
            guidance_scale=0.6,
            steps=2,
            height=32,
            width=32,
            model="tiny",
            model_revision="",
            metamergen_version="0.1.0.dev0",
        )
        base = 0.5 - 0.1 * prefix - (0.1 if cond == "both" else 0.0)
        for m in metrics:
            row[m] = base + rng.normal(0, 0.02)
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "scores.csv", index=False)
    return folder / "scores.csv"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src"):
                self.links.append(value)


# ----------------------------------------------------------------------------------- statistics


def test_metric_directions_match_the_metric_classes():
    from metamergen.demo.measures import TOY_METRICS  # registers the toy measures, as the demo does
    from metamergen.evaluation.metrics import METRICS, DinoCosine
    from metamergen.evaluation.registry import MODEL_METRICS, WEIGHT_FREE_METRICS
    from metamergen.metamers.measures import MEASURE_INFO  # the report registers these itself

    for name, info in METRIC_INFO.items():
        if name in TOY_METRICS:  # recovered shares: higher is better; errors (mse): lower
            assert info is TOY_METRICS[name] and info.higher_is_similar == (not name.endswith("_mse")), name
            continue
        if name in MEASURE_INFO:  # recognised and null-test shares: higher; the synthesis loss: lower
            assert info is MEASURE_INFO[name] and info.higher_is_similar == (name != "loss"), name
            continue
        cls = DinoCosine if name == "dino" else METRICS[name]
        assert info.higher_is_similar == cls.higher_is_similar, name
    assert set(METRIC_INFO) == set(METRICS) | set(TOY_METRICS) | set(MEASURE_INFO)
    assert set(WEIGHT_FREE_METRICS) | set(MODEL_METRICS) == set(METRICS)


def test_unit_means_weight_every_unit_equally():
    # scene A: four hypotheses at 0, scene B: one at 1 -> mean of unit means 0.5, not 0.2
    means = unit_means([0, 0, 0, 0, 1, np.nan], ["A", "A", "A", "A", "B", "B"])
    assert means.tolist() == [0.0, 1.0]


def test_bootstrap_ci_matches_exact_enumeration():
    values = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    n = len(values)
    # the exact bootstrap distribution: all n**n equally likely resamples
    exact = np.array([values[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
    lo_exact, hi_exact = np.quantile(exact, [0.025, 0.975])
    mean, lo, hi = bootstrap_ci(values, n_boot=20000, seed=1)
    assert mean == pytest.approx(3.2)
    step = 1 / n  # resampled means live on a grid of (sum of values) / n
    assert abs(lo - lo_exact) <= step + 1e-9 and abs(hi - hi_exact) <= step + 1e-9
    assert abs(lo - 0.1) > 0.4 and abs(hi - 6.3) > 0.3  # not the normal approximation 3.2 +- 1.96 * 1.58
    assert bootstrap_ci(values, n_boot=500, seed=3) == bootstrap_ci(values, n_boot=500, seed=3)  # seeded
    assert np.isnan(bootstrap_ci([4.0])[1]) and bootstrap_ci([4.0])[0] == 4.0  # one unit: no interval


def test_summary_resamples_scenes_not_images(tmp_path: Path):
    table = pd.read_csv(make_study(tmp_path))
    cell = (table["condition"] == "both") & (table["fixation_source"] == "viewer") & (table["prefix"] == 1)
    table.loc[cell & (table["scene_id"] == "s1"), "dreamsim"] = 0.0
    table.loc[cell & (table["scene_id"] == "s2"), "dreamsim"] = 1.0
    table.loc[cell & (table["scene_id"] == "s2") & (table["hypothesis"] == 1), "dreamsim"] = np.nan
    s = summarize_scores(table, ["dreamsim"], unit="scene", n_boot=4000, seed=0)
    row = s[(s["condition"] == "both") & (s["fixation_source"] == "viewer") & (s["prefix"] == "1")].iloc[0]
    # per-scene means 0 and 1 -> 0.5 (the image mean would be 1/3); resamples of two units: {0, .5, 1}
    assert row["mean"] == pytest.approx(0.5) and row["n_units"] == 2 and row["n_images"] == 3
    assert (row["ci_low"], row["ci_high"]) == (0.0, 1.0)
    img = summarize_scores(table, ["dreamsim"], unit="image", n_boot=100, seed=0)
    r2 = img[(img["condition"] == "both") & (img["fixation_source"] == "viewer") & (img["prefix"] == "1")].iloc[0]
    assert r2["mean"] == pytest.approx(1 / 3) and r2["n_units"] == 3
    assert list(s["condition"].unique()) == ["both", "peripheral"]  # paper order


# ---------------------------------------------------------------------------------- foveated view


def test_foveated_input_is_sharp_at_the_fixated_patch_and_blurred_elsewhere():
    scene = _noise(448, 448, 7)  # canvas size: the squash fit is the identity
    sharp = np.asarray(scene).astype(int)
    view = np.asarray(foveated_input(scene, np.array([[20.0, 30.0]]), 0.25, size=448, patch_size=14)).astype(int)
    patch = (slice(28, 42), slice(14, 28))  # rows of y = 30, columns of x = 20 (14-px patches)
    assert np.array_equal(view[patch], sharp[patch])
    outside = np.ones(view.shape[:2], bool)
    outside[patch] = False
    assert np.abs(view[outside] - sharp[outside]).mean() > 30  # noise blurred towards grey
    assert view[outside].std() < 0.5 * sharp[outside].std()
    periphery = np.asarray(
        foveated_input(scene, np.array([[20.0, 30.0]]), 0.25, "peripheral", size=448, patch_size=14)
    ).astype(int)
    assert np.array_equal(periphery[outside], view[outside]) and not np.array_equal(periphery[patch], sharp[patch])
    foveal = np.asarray(
        foveated_input(scene, np.array([[20.0, 30.0]]), 0.25, "foveal", size=448, patch_size=14)
    ).astype(int)
    assert np.array_equal(foveal[patch], sharp[patch]) and (foveal[outside] == 128).all()


def test_what_the_model_saw_is_drawn_on_the_models_own_canvas_and_patch_grid():
    """The demo model encodes at 112 px with 14-px patches: on a 64-px scene a patch is 8 image pixels."""
    from metamergen.demo.run import DEMO_MODEL
    from metamergen.encoders import canvas_size
    from metamergen.pipeline import MetamerGenPipeline

    pipe = MetamerGenPipeline.from_pretrained(DEMO_MODEL)
    size, patch = canvas_size(pipe.feature_extractor), int(pipe.image_encoder.config.patch_size)
    assert (size, patch) == (112, 14)
    scene = Image.new("RGB", (64, 64), (220, 30, 30))
    view = np.asarray(foveated_input(scene, np.array([[20.5, 40.5]]), 0.25, "foveal", size=size, patch_size=patch))
    sharp = np.abs(view.astype(int) - 128).sum(-1) > 150  # red where the fovea is, grey elsewhere
    rows, cols = np.nonzero(sharp)
    # canvas x = 20.5 * 112 / 64 = 35.9 -> column 2 = image x 16..24; y = 40.5 -> row 5 = image y 40..48
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (40, 48, 16, 24)


def test_foveated_input_maps_fixations_through_the_squash_fit():
    # x squashed by 2, y stretched by 2; 8x4-pixel noise blocks survive the squash but not s = 1/8
    blocks = np.asarray(_noise(112, 56, 3))
    scene = Image.fromarray(np.kron(blocks, np.ones((4, 8, 1), dtype=np.uint8)))
    sharp = np.asarray(scene).astype(int)
    view = np.asarray(foveated_input(scene, np.array([[450.0, 100.0]]), 0.125, size=448, patch_size=14)).astype(int)
    assert view.shape == sharp.shape
    # the fixated canvas patch (col 16, row 14) covers image x 448..476, y 98..105
    near = np.abs(view[99:104, 452:472] - sharp[99:104, 452:472]).mean()
    far = np.abs(view[20:60, 100:300] - sharp[20:60, 100:300]).mean()
    assert near < 0.3 * far


# ------------------------------------------------------------------------------------- report


def test_report_writes_figures_sheets_and_a_resolving_index(tmp_path: Path):
    scores = make_study(tmp_path / "study")
    res = write_report(scores, tmp_path / "report", n_boot=200)
    out = tmp_path / "report"
    assert sorted(res.figures) == ["clip", "dreamsim", "ssim"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["clip.png", "dreamsim.png", "ssim.png"]
    assert len(res.sheets) == 2 * 2 * 2  # scene x scanpath(1) x condition x source
    for p in [*res.figures.values(), *res.sheets]:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100
    with Image.open(out / "sheets" / "s1_s1-subj1_both_viewer.png") as im:
        # two prefix rows of (scene, foveated input, 2 hypotheses) at 256 px, plus the header
        assert im.height == 20 + 2 * (256 + 16 + 12)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 * 2 * 2 * 2 and set(summary["n_units"]) == {2}
    page = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert len(parser.links) >= 3 + 3 + 8 + 1
    for link in parser.links:
        assert not link.startswith(("/", "http")), link
        assert (out / link).is_file(), link
    assert "lower = more similar" in page and "DS" in page and "bootstrap" in page
    assert not list(out.rglob("*.tmp"))


def test_report_plots_only_the_metric_columns_present(tmp_path: Path):
    scores = make_study(tmp_path / "study", metrics=("clip",))
    res = write_report(scores, tmp_path / "r", n_boot=50, sheets=False)
    assert list(res.figures) == ["clip"] and not (tmp_path / "r" / "sheets").exists()
    with pytest.raises(ReportError, match=r"\['dreamsim'\].*clip"):
        write_report(scores, tmp_path / "r2", metrics=["dreamsim"], n_boot=50, sheets=False)


def test_report_errors_name_the_missing_column_or_file(tmp_path: Path):
    scores = make_study(tmp_path / "study")
    table = pd.read_csv(scores)
    table.drop(columns=["scanpath_id"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ReportError, match="scanpath_id"):
        write_report(tmp_path / "bad.csv", tmp_path / "out1", n_boot=10)
    table.drop(columns=["dreamsim", "clip", "ssim"]).to_csv(tmp_path / "study" / "nometric.csv", index=False)
    with pytest.raises(ReportError, match="no metric columns"):
        write_report(tmp_path / "study" / "nometric.csv", tmp_path / "out1", n_boot=10)
    (tmp_path / "study" / "images" / "s2-both-random-n2-h1.png").unlink()
    with pytest.raises(ReportError, match=r"(?s)1 image file.*s2-both-random-n2-h1\.png"):
        write_report(scores, tmp_path / "out2", n_boot=10)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()  # nothing half-written
    write_report(scores, tmp_path / "out3", n_boot=10, sheets=False)  # figures need no image files


def test_report_root_resolves_relative_paths_and_the_command_runs(tmp_path: Path, capsys):
    scores = make_study(tmp_path / "study")
    moved = tmp_path / "elsewhere" / "scores.csv"
    moved.parent.mkdir()
    moved.write_bytes(scores.read_bytes())
    with pytest.raises(ReportError, match="--root"):
        write_report(moved, tmp_path / "r0", n_boot=10)
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "report",
            "--scores",
            str(moved),
            "--root",
            str(tmp_path / "study"),
            "--out",
            str(tmp_path / "r"),
            "--metrics",
            "dreamsim,clip",
            "--n-boot",
            "50",
            "--max-sheets",
            "3",
        ]
    )
    assert args.func(args) == 0
    assert "3 contact sheet(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "r" / "figures").iterdir()) == ["clip.png", "dreamsim.png"]
    args = parser.parse_args(["report", "--scores", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="error: No table"):
        args.func(args)


def test_parquet_table_with_whole_scanpath_rows(tmp_path: Path):
    scores = make_study(tmp_path / "study", metrics=("dreamsim",))
    table = pd.read_csv(scores)
    table["prefix"] = table["prefix"].astype("Int64")
    table.loc[table["prefix"] == 2, "prefix"] = pd.NA  # empty prefix = the whole scanpath
    table.to_parquet(tmp_path / "study" / "scores.parquet")
    res = write_report(tmp_path / "study" / "scores.parquet", tmp_path / "r", n_boot=50)
    summary = pd.read_csv(tmp_path / "r" / "summary.csv", dtype={"prefix": str})
    assert sorted(summary["prefix"].unique()) == ["1", "all"]
    assert "all" in (tmp_path / "r" / "index.html").read_text() and len(res.sheets) == 8


def test_baselines_appear_in_the_table_figures_and_summary_and_counts_are_per_cell(tmp_path: Path):
    """baselines.csv next to the scores is read by default: grey rows in the table, lines in every
    figure, baselines_summary.csv; the table's n is the cell's, not the last metric's."""
    scores = make_study(tmp_path / "study", metrics=("ssim", "clip"))
    table = pd.read_csv(scores)
    table.loc[table.index[::2], "clip"] = np.nan  # a metric with values for half the images only
    table.to_csv(scores, index=False)
    base = pd.DataFrame(
        [
            dict(baseline="flat", scene=f"scenes/{sid}.png", scene_id=sid, peripheral_blur=None, ssim=0.9, clip=0.2)
            for sid in SCENES
        ]
        + [
            dict(
                baseline="periphery", scene=f"scenes/{sid}.png", scene_id=sid, peripheral_blur=0.25, ssim=0.7, clip=0.5
            )
            for sid in SCENES
        ]
    )
    base.to_csv(tmp_path / "study" / "baselines.csv", index=False)
    write_report(scores, tmp_path / "r", n_boot=50, sheets=False)
    summary = pd.read_csv(tmp_path / "r" / "baselines_summary.csv")
    assert set(summary["baseline"]) == {"flat", "periphery"} and set(summary["n_units"]) == {2}
    assert summary.set_index(["baseline", "metric"])["mean"][("flat", "ssim")] == pytest.approx(0.9)
    page = (tmp_path / "r" / "index.html").read_text()
    assert page.count('<tr class="baseline">') == 2 and "flat image of the scene" in page and "s = 0.25" in page
    assert "<td>2 / 4</td>" in page  # 2 scenes, 4 images per cell: the ssim count, not clip's
    assert "(n 2 / 2)" in page  # clip says on how many images its mean rests
    assert "Rendered by: tiny." in page
    without = write_report(scores, tmp_path / "r2", n_boot=50, sheets=False, baselines=False)
    assert not (without.out / "baselines_summary.csv").exists()


# ----------------------------------------------------------------------------------- bad input


def _cell(table, cond="both", src="viewer", prefix=1):
    return (table["condition"] == cond) & (table["fixation_source"] == src) & (table["prefix"] == prefix)


def test_non_finite_scores_are_excluded_counted_and_shown(tmp_path: Path, capsys):
    """Policy: means over the finite scores; every cell, summary.csv, the page and the command say
    how many were left out (before, +inf PSNR and NaN vanished from the means without a word)."""
    from metamergen.commands import main

    scores = make_study(tmp_path / "study", metrics=("psnr", "ssim"))
    table = pd.read_csv(scores)
    table.loc[_cell(table), "psnr"] = [np.inf, 10.0, 20.0, np.nan]  # s1: inf, 10; s2: 20, NaN
    table.loc[_cell(table, "peripheral", "random", 2), "psnr"] = np.inf  # a cell with no finite score
    table.to_csv(scores, index=False)
    s = summarize_scores(table, ["psnr", "ssim"], n_boot=100, seed=0).set_index(
        ["metric", "condition", "fixation_source", "prefix"]
    )
    both = s.loc[("psnr", "both", "viewer", "1")]
    assert both["mean"] == pytest.approx(15.0)  # scene means 10 and 20: the finite scores only
    assert (both["n_rows"], both["n_nonfinite"], both["n_inf"], both["n_images"], both["n_units"]) == (4, 2, 1, 2, 2)
    empty = s.loc[("psnr", "peripheral", "random", "2")]  # kept, not dropped: its row says why it is empty
    assert np.isnan(empty["mean"]) and (empty["n_rows"], empty["n_nonfinite"], empty["n_inf"]) == (4, 4, 4)
    assert s.loc[("ssim", "both", "viewer", "1"), "n_nonfinite"] == 0

    code = main(["report", "--scores", str(scores), "--out", str(tmp_path / "r"), "--n-boot", "50", "--no-sheets"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    warning = [line for line in err if "warning" in line]
    assert warning == [
        "metamergen report: warning: non-finite scores left out of the means: psnr 6 of 32 (5 infinite, "
        "1 NaN or empty) (per cell: n_nonfinite in summary.csv and on index.html)."
    ]
    csv = pd.read_csv(tmp_path / "r" / "summary.csv", dtype={"prefix": str})
    assert {"n_rows", "n_nonfinite", "n_inf"} <= set(csv.columns) and csv["n_nonfinite"].sum() == 6
    page = (tmp_path / "r" / "index.html").read_text()
    assert "(2 of 4 non-finite, excluded)" in page and "(4 of 4 non-finite, excluded)" in page
    assert "Non-finite scores excluded from the means:</b> psnr 6 of 32" in page
    assert "left out of every mean and interval" in page  # the policy is stated on every page
    assert (tmp_path / "r" / "figures" / "psnr.png").is_file()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_unreadable_image_stops_the_report_before_anything_is_written(tmp_path: Path):
    """Before: figures, summary.csv and half the sheets were written, then the error, no index.html."""
    scores = make_study(tmp_path / "study")
    out = tmp_path / "report"
    write_report(scores, out, n_boot=10, max_sheets=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    table = pd.read_csv(scores)
    table["ssim"] = 0.0  # a new report would have another summary.csv
    table.to_csv(scores, index=False)
    _truncate(tmp_path / "study" / "images" / "s1-both-viewer-n2-h1.png")  # in the first sheet
    with pytest.raises(
        ReportError, match=r"Nothing was written: .*cannot be read: image_id s1-both-viewer-n2-h1 .*truncated"
    ):
        write_report(scores, out, n_boot=10, max_sheets=1)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    with pytest.raises(ReportError, match="cannot be read"):
        write_report(scores, tmp_path / "fresh", n_boot=10)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "study"]  # no temporary folder left
    write_report(scores, out, n_boot=10, sheets=False)  # without sheets the images are not needed
    assert pd.read_csv(out / "summary.csv").query("metric == 'ssim'")["mean"].eq(0).all()
    assert not (out / "sheets").exists()  # replaced as a whole: no sheets left from the previous report


def test_a_failure_while_building_leaves_the_previous_report_whole(tmp_path: Path, monkeypatch):
    import metamergen.viz.report as report

    scores = make_study(tmp_path / "study")
    out = tmp_path / "report"
    write_report(scores, out, n_boot=10, sheets=False)
    before = (out / "summary.csv").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "build_sheet", broken)  # fails after summary.csv and the figures
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(scores, out, n_boot=10, seed=1)
    assert (out / "summary.csv").read_bytes() == before and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "study"]


def test_the_report_refuses_to_replace_a_folder_holding_other_files(tmp_path: Path):
    scores = make_study(tmp_path / "study", metrics=("ssim",))
    with pytest.raises(ReportError, match=r"holds files a report does not write \(images, scenes, scores\.csv\)"):
        write_report(scores, tmp_path / "study", n_boot=10, sheets=False)
    (tmp_path / "empty").mkdir()
    write_report(scores, tmp_path / "empty", n_boot=10, sheets=False)  # an empty folder is fine
    assert (tmp_path / "empty" / "index.html").is_file()


BAD_REPORT_SETTINGS = [
    (["--confidence", "1.5"], "--confidence is the interval level, a number strictly between 0 and 1"),
    (["--confidence", "0"], "--confidence is the interval level"),
    (["--confidence", "-0.5"], "--confidence is the interval level"),
    (["--confidence", "nan"], "--confidence is the interval level"),
    (["--n-boot", "0"], "--n-boot is the number of bootstrap resamples and must be >= 1"),
    (["--sheet-height", "0"], "--sheet-height is the panel height in pixels"),
]


@pytest.mark.parametrize("extra, message", BAD_REPORT_SETTINGS, ids=[" ".join(a) for a, _ in BAD_REPORT_SETTINGS])
def test_bad_report_settings_are_one_line_usage_errors(tmp_path: Path, capsys, extra: list[str], message: str):
    from metamergen.commands import main

    scores = make_study(tmp_path / "study", metrics=("ssim",))
    code = main(["report", "--scores", str(scores), "--out", str(tmp_path / "r"), "--no-sheets", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("metamergen report: error: ") and message in err[0], err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------- model metamers


def add_model_metamers(folder: Path) -> pd.DataFrame:
    """Rows as ``metamergen model-metamers`` writes them (scored with ssim): 2 natural images x (model m1's
    layers conv1, conv2 + an ensemble's one), tiny PNGs; recognised everywhere but m1's conv2 on n1."""
    (folder / "natural").mkdir(parents=True)
    rows = []
    for i, nid in enumerate(("n0", "n1")):
        _noise(40, 30, 50 + i).save(folder / "natural" / f"{nid}.png")
        for model, layer, stem, ssim in (
            ("m1", "conv1", "conv1", 0.6),
            ("m1", "conv2", "conv2", 0.3),
            ("ens/switch", "m1:conv2+m2:fc", "ensemble", 0.4),
        ):
            (folder / "metamers" / nid).mkdir(parents=True, exist_ok=True)
            _noise(16, 16, len(rows) + 200).save(folder / "metamers" / nid / f"{stem}.png")
            rows.append(
                dict(
                    image_id=f"{nid}/{stem}",
                    path=f"metamers/{nid}/{stem}.png",
                    scene=f"natural/{nid}.png",
                    scene_id=nid,
                    source_id=nid,
                    layer=layer,
                    model=model,
                    loss=0.1 * (i + 1),
                    recognized=int(not (layer == "conv2" and nid == "n1")),
                    null_test_passed=1,
                    ssim=ssim + 0.1 * i,
                )
            )
    return pd.DataFrame(rows)


def test_one_report_shows_scene_and_model_metamers(tmp_path: Path):
    """A table holding both kinds: the scene part is the scene-only report's, the model metamers get
    rows per model x layer (the run's order) with their tests first, their own figures and sheets."""
    folder = tmp_path / "both"
    scene_only = pd.read_csv(make_study(folder, metrics=("ssim", "dreamsim")))
    layers = add_model_metamers(folder)
    pd.concat([scene_only, layers], ignore_index=True).to_csv(folder / "both.csv", index=False)
    res = write_report(folder / "both.csv", tmp_path / "r", n_boot=200)
    alone = write_report(folder / "scores.csv", tmp_path / "alone", n_boot=200, sheets=False)

    # the scene metamers' summary is untouched by the model metamers beside them
    pd.testing.assert_frame_equal(pd.read_csv(res.summary_csv), pd.read_csv(alone.summary_csv))
    cells = pd.read_csv(res.layers_summary_csv)
    assert list(dict.fromkeys(cells["metric"])) == ["recognized", "null_test_passed", "loss", "ssim"]  # no dreamsim
    rec = cells[cells["metric"] == "recognized"]
    assert rec[["model", "layer"]].values.tolist() == [
        ["m1", "conv1"],
        ["m1", "conv2"],
        ["ens/switch", "m1:conv2+m2:fc"],
    ]
    assert rec["mean"].tolist() == [1.0, 0.5, 1.0] and set(cells["n_units"]) == {2}
    ssim = cells[cells["metric"] == "ssim"].set_index("layer")["mean"]
    assert ssim["conv1"] == pytest.approx(0.65) and ssim["conv2"] == pytest.approx(0.35)
    assert set(pd.read_csv(res.summary_csv)["metric"]) == {"ssim", "dreamsim"}

    page = (tmp_path / "r" / "index.html").read_text()
    assert "Score vs number of fixations" in page and "Mean scores per model × layer" in page
    assert page.count('<tr><td class="k">m1</td>') == 2 and '<td class="k">ens/switch</td>' in page
    assert "2 scenes" in page and "6 model metamers of 2 natural images" in page
    assert {"ssim", "dreamsim", "ssim_by_layer", "recognized_by_layer", "loss_by_layer"} <= set(res.figures)
    assert "dreamsim_by_layer" not in res.figures
    sheets = {p.name for p in res.sheets}
    assert {"layers_m1_1-2.png", "layers_ens-switch_1-2.png"} <= sheets and len(sheets) == 8 + 2
    with Image.open(tmp_path / "r" / "sheets" / "layers_m1_1-2.png") as im:
        assert im.height == 20 + 2 * (256 + 16 + 12)  # header + one row per natural image
    parser = _Links()
    parser.feed(page)
    assert all((tmp_path / "r" / link).is_file() for link in parser.links)


def test_a_model_metamers_table_alone_has_no_scene_sections(tmp_path: Path):
    add_model_metamers(tmp_path).to_csv(tmp_path / "scores.csv", index=False)
    res = write_report(tmp_path / "scores.csv", tmp_path / "r", n_boot=50, max_sheets=1)
    page = (tmp_path / "r" / "index.html").read_text()
    assert res.summary_csv is None and not (tmp_path / "r" / "summary.csv").exists()
    assert "fixations" not in page and "1 further sheet(s) left out" in page
    assert [p.name for p in res.sheets] == ["layers_m1_1-2.png"]
