"""Extreme scenes and the score resolution: tiny and long thin scenes
are refused before the model loads, contact sheets stay bounded, one tiny image does not stop a
study's scoring, and scores are computed at a stated resolution recorded in the table."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from metamergen.commands import main
from metamergen.evaluation.metrics import METRICS, SCORE_SIZE, score_resolution
from metamergen.evaluation.scoring import ScoreWarning, score_manifest
from metamergen.utils.images import MAX_SCENE_ASPECT, MIN_SCENE_SIDE, SceneSizeError, check_scene_size
from metamergen.viz.figures import MAX_SHEET_PIXELS, MAX_SHEET_WIDTH, contact_sheet


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def smooth(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1)
    return Image.fromarray(np.round(img * 255).astype(np.uint8))


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# --------------------------------------------------------------------------- scene limits


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((1, 1), f"at least {MIN_SCENE_SIDE} px on each side"),
        ((300, 10), f"at least {MIN_SCENE_SIDE} px"),
        ((10000, 10), f"at least {MIN_SCENE_SIDE} px"),
        ((400, 40), f"longer than {MAX_SCENE_ASPECT:.0f}:1 are refused.*crop it"),
        ((20, 200), "crop it into pieces"),
    ],
)
def test_tiny_and_long_thin_scenes_are_refused_before_anything_is_written(tmp_path, capsys, size, message):
    scene = tmp_path / "scene.png"
    noise(*size).save(scene)
    out = tmp_path / "render"
    line = _one_line_error(capsys, ["render", "--tiny", "--image", str(scene), "--out", str(out), "--steps", "1"])
    assert "scene.png" in line and f"{size[0]}x{size[1]}" in line
    import re

    assert re.search(message, line), line
    assert not out.exists()
    fixations = tmp_path / "fix.json"
    fixations.write_text("[]")
    study = tmp_path / "study"
    line = _one_line_error(
        capsys,
        ["generate", "--tiny", "--image", str(scene), "--fixations", str(fixations), "--out", str(study)],
    )
    assert re.search(message, line) and not study.exists()


def test_a_wide_scene_renders_with_a_warning_and_ordinary_scenes_without():
    with pytest.warns(UserWarning, match=r"400x100 px, 4.0:1.*crop it to at most 3:1"):
        check_scene_size(400, 100, name="pano.png")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for w, h in ((16, 16), (48, 32), (1680, 1050), (96, 32)):  # 3:1 is still fine
            check_scene_size(w, h)
    with pytest.raises(SceneSizeError, match="15x400"):
        check_scene_size(15, 400)


# --------------------------------------------------------------------------- contact sheets


def test_contact_sheets_stay_bounded_and_ordinary_ones_are_unchanged(tmp_path):
    thin = [noise(10000, 10), noise(1012, 2), noise(64, 64)]  # what a 10000x10 scene used to give
    sheet = contact_sheet(thin, ["scene", "render", "square"])
    assert sheet.width <= MAX_SHEET_WIDTH and sheet.width * sheet.height <= MAX_SHEET_PIXELS
    assert sheet.size == (6 + 3 * (1024 + 6) - 1024 + 256, 256 + 28)  # two panels 4:1 (1024 px), one 256 px
    sheet.save(tmp_path / "sheet.png")
    with Image.open(tmp_path / "sheet.png") as back:  # Pillow opens it (it refused the 73 MB one)
        back.load()
    many = contact_sheet([noise(90, 60, s) for s in range(200)])
    assert many.width <= MAX_SHEET_WIDTH and many.width * many.height <= MAX_SHEET_PIXELS
    # an ordinary sheet is one row: panels at 256 px high, 6 px apart, a 16-px caption line
    ordinary = contact_sheet([noise(90, 60), noise(64, 64), noise(48, 32)], ["a", "b", "c"])
    assert ordinary.size == (6 + 384 + 6 + 256 + 6 + 384 + 6, 256 + 28)
    first = np.asarray(ordinary)[6 : 6 + 256, 6 : 6 + 384]
    np.testing.assert_array_equal(first, np.asarray(noise(90, 60).resize((384, 256))))


def test_a_caption_longer_than_its_panel_is_cut_short_of_the_next_panel():
    long = "input fovea + periphery s=0.25 (frame not recorded: 448/14 assumed) " * 2
    sheet = np.asarray(contact_sheet([noise(32, 32), noise(32, 32, 1)], [long, ""], height=64))
    strip = sheet[6 + 64 :, :]  # the caption line under the panels
    assert (strip[:, 6 : 6 + 64] < 128).any()  # the caption is drawn under its panel
    assert (strip[:, 6 + 64 :] == 255).all()  # and nothing of it under the gap or the next panel


# --------------------------------------------------------------------------- score resolution


def test_weight_free_metrics_compare_at_the_score_resolution():
    assert SCORE_SIZE == 512
    assert score_resolution(1680, 1050) == (512, 320)
    assert score_resolution(1050, 1680) == (320, 512)
    assert score_resolution(480, 300) == (480, 300)  # never upsampled
    assert score_resolution(1680, 1050, None) == (1680, 1050)
    original, generation = smooth(1024, 640), smooth(256, 160)
    for name in ("psnr", "mse", "ssim", "color_hist", "gabor", "sobel"):
        metric = METRICS[name]()
        at_512 = (
            [original.resize((512, 320), Image.Resampling.BICUBIC)],
            [generation.resize((512, 320), Image.Resampling.BICUBIC)],
        )
        expected = METRICS[name](score_size=None)(*at_512)
        np.testing.assert_array_equal(metric([original], [generation]), expected, err_msg=name)
        assert metric.input_size((1024, 640)) == (512, 320)
        full = METRICS[name](score_size=None)
        upsampled = generation.resize((1024, 640), Image.Resampling.BICUBIC)  # the old behaviour, on request
        np.testing.assert_array_equal(full([original], [generation]), full([original], [upsampled]), err_msg=name)


def test_the_default_is_unchanged_where_the_original_is_within_the_score_size():
    original, generation = smooth(480, 300), smooth(160, 96)
    old = generation.resize((480, 300), Image.Resampling.BICUBIC)  # what every metric did before
    for name in ("psnr", "mse", "ssim", "color_hist", "gabor", "sobel"):
        np.testing.assert_array_equal(
            METRICS[name]()([original], [generation]), METRICS[name]()([original], [old]), err_msg=name
        )


def test_the_command_default_is_the_metrics_default():
    from metamergen.commands import score

    assert score._SCORE_SIZE == SCORE_SIZE


# --------------------------------------------------------------------------- score: one tiny image


@pytest.fixture()
def tiny_study(pipe, tmp_path):
    """A one-scene study (48x32) plus a hand-added row whose original is 8x6 (from an old study)."""
    from metamergen.study import StudySettings, load_fixation_list_scene, plan_study, run_study
    from metamergen.study.manifest import MANIFEST_NAME, read_manifest

    smooth(48, 32).save(tmp_path / "scene.png")
    (tmp_path / "fix.json").write_text("[[10, 10]]")
    scenes = load_fixation_list_scene(tmp_path / "scene.png", tmp_path / "fix.json")
    out = tmp_path / "out"
    jobs = plan_study(scenes, StudySettings(hypotheses=2, steps=1, height=16, width=16), model="tiny-random", pipe=pipe)
    run_study(pipe, jobs, out, progress=False)
    rows = read_manifest(out / MANIFEST_NAME)
    smooth(8, 6).save(tmp_path / "tiny.png")
    smooth(8, 6).save(out / "images" / "tiny_gen.png")
    extra = dict(rows[0], image_id="tiny_gen", path="images/tiny_gen.png", scene=str(tmp_path / "tiny.png"))
    with open(out / MANIFEST_NAME, "a") as f:
        f.write(json.dumps(extra) + "\n")
    return out / MANIFEST_NAME


def test_one_image_too_small_for_ssim_scores_nan_with_a_counted_warning(tiny_study, tmp_path, capsys):
    with pytest.warns(ScoreWarning, match=r"ssim: 1 of 3 image\(s\) are smaller than 11x11 px"):
        rows = score_manifest(tiny_study, ["psnr", "ssim"])
    by_id = {r["image_id"]: r for r in rows}
    assert np.isnan(by_id["tiny_gen"]["ssim"]) and by_id["tiny_gen"]["psnr"] == np.inf
    assert all(np.isfinite(r["ssim"]) for r in rows if r["image_id"] != "tiny_gen")
    assert by_id["tiny_gen"]["score_resolution"] == "psnr/ssim 8x6"
    # the command scores the whole study, says so in one warning line, and the report copes
    out = tmp_path / "scores.csv"
    code = main(["score", "--manifest", str(tiny_study), "--out", str(out), "--metrics", "psnr,ssim", "--no-progress"])
    assert code == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        "warning: ssim: 1 of 3 image(s) are smaller than 11x11 px at the score resolution and were scored NaN "
        "(the report leaves them out of its means and counts them); pass a larger --score-size, or leave the "
        "tiny images out of the study."
    ]
    with open(out, newline="") as f:
        table = {r["image_id"]: r for r in csv.DictReader(f)}
    assert table["tiny_gen"]["ssim"] == "nan" and len(table) == 3
    assert {r["score_resolution"] for k, r in table.items() if k != "tiny_gen"} == {"psnr/ssim 48x32"}


def test_score_size_is_a_flag_recorded_in_the_table(tiny_study, tmp_path, capsys):
    study = tiny_study.parent
    big = tmp_path / "big.png"
    smooth(1024, 640).save(big)
    shutil.copy(big, tmp_path / "scene.png")  # the study's scene grows: 1024x640 (the rows still name it)
    out = tmp_path / "s.csv"
    assert main(["score", "--manifest", str(tiny_study), "--out", str(out), "--metrics", "mse", "--no-progress"]) == 0
    with open(out, newline="") as f:
        table = [r for r in csv.DictReader(f) if r["image_id"] != "tiny_gen"]
    assert {r["score_resolution"] for r in table} == {"mse 512x320"}
    args = ["score", "--manifest", str(tiny_study), "--out", str(out), "--metrics", "mse", "--no-progress"]
    assert main([*args, "--score-size", "full"]) == 0
    with open(out, newline="") as f:
        table = [r for r in csv.DictReader(f) if r["image_id"] != "tiny_gen"]
    assert {r["score_resolution"] for r in table} == {"mse 1024x640"}
    capsys.readouterr()
    for bad in ("8", "abc", "-1"):
        line = _one_line_error(capsys, [*args, "--score-size", bad])
        assert "--score-size" in line and "'full'" in line
    assert study.is_dir()
