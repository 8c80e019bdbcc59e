"""Dataset converters: exact counts of what is kept and dropped, no silent rescaling, the CLI."""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metamergen.commands.convert import add_parser as add_convert_parser
from metamergen.fixations.converters import convert_coco_freeview, convert_coco_search18, convert_csv
from metamergen.fixations.io import read_info, read_scanpaths

NAN = float("nan")


def freeview_file(tmp_path: Path) -> Path:
    """Three records: one with a NaN, one with an off-image fixation, one length mismatch."""
    records = [
        {
            "name": "000000000001.jpg",
            "subject": 1,
            "X": [840.0, 240.0, NAN, 300.0],
            "Y": [525.0, 200.0, 300.0, 400.0],
            "T": [90, 200, 250, 300],
            "length": 4,
            "split": "train",
        },
        {
            "name": "000000000002.jpg",
            "subject": 2,
            "X": [840.0, 1700.0, 250.0],
            "Y": [525.0, 10.0, 60.0],
            "T": [80, 60, 70],
            "length": 3,
            "split": "valid",
        },
        {
            "name": "000000000003.jpg",
            "subject": 3,
            "X": [840.0, 1.0, 2.0],
            "Y": [525.0, 1.0, 2.0],
            "T": [1, 2, 3],
            "length": 4,
            "split": "train",
        },
    ]
    path = tmp_path / "freeview.json"
    path.write_text(json.dumps(records))  # NaN written as the bare NaN token, as in the wild
    return path


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_freeview_counts_and_kept_coordinates(tmp_path: Path) -> None:
    scanpaths, report = no_warnings(convert_coco_freeview, freeview_file(tmp_path))
    assert [s.id for s in scanpaths] == ["000000000001-1", "000000000002-2"]
    np.testing.assert_array_equal(scanpaths[0].xy, [[240.0, 200.0], [300.0, 400.0]])
    np.testing.assert_array_equal(scanpaths[1].xy, [[250.0, 60.0]])
    assert [f.duration_ms for f in scanpaths[0]] == [200.0, 300.0]
    assert all(f.onset_ms is None for s in scanpaths for f in s)
    assert (scanpaths[0].width, scanpaths[0].height, scanpaths[0].subject) == (1680, 1050, "1")
    assert scanpaths[0].image == "000000000001.jpg" and scanpaths[1].extra == {"split": "valid"}
    assert (report.records_read, report.scanpaths_written, report.fixations_kept) == (3, 2, 3)
    assert report.dropped == Counter(
        {
            "initial centre fixation": 2,
            "non-finite coordinate": 1,
            "off-image fixation": 1,
            "length mismatch": 1,
        }
    )
    assert report.examples["non-finite coordinate"] == ["record 0 fixation 2"]
    assert report.examples["off-image fixation"] == ["record 1 fixation 1"]
    assert report.examples["length mismatch"] == ["record 2"]
    text = report.summary()
    assert "read 3 records, wrote 2 scanpaths with 3 fixations" in text
    assert "length mismatch: 1 records (e.g. record 2)" in text


def test_freeview_keep_initial_and_clip(tmp_path: Path) -> None:
    scanpaths, report = convert_coco_freeview(freeview_file(tmp_path), drop_initial_fixation=False)
    np.testing.assert_array_equal(scanpaths[0].xy, [[840.0, 525.0], [240.0, 200.0], [300.0, 400.0]])
    assert scanpaths[0].fixations[0].duration_ms == 90.0
    assert report.fixations_kept == 5 and "initial centre fixation" not in report.dropped

    scanpaths, report = convert_coco_freeview(freeview_file(tmp_path), off_image="clip")
    np.testing.assert_array_equal(scanpaths[1].xy, [[np.nextafter(1680.0, 0.0), 10.0], [250.0, 60.0]])
    assert report.fixations_clipped == 1 and "off-image fixation" not in report.dropped
    with pytest.raises(ValueError, match=r"record 1 fixation 1: .*outside the 1680x1050 image"):
        convert_coco_freeview(freeview_file(tmp_path), off_image="error")


def test_search18_keeps_task_condition_bbox(tmp_path: Path) -> None:
    record = {
        "name": "000000000009.jpg",
        "subject": 4.0,
        "task": "bottle",
        "condition": "present",
        "bbox": [10, 20, 30, 40],
        "X": [840.0, 400.0],
        "Y": [525.0, 500.0],
        "T": [100, 150],
        "length": 2,
        "split": "test",
        "RT": 812,
    }
    scanpaths, report = convert_coco_search18([record, dict(record)], image_prefix="images/{task}")
    assert [s.id for s in scanpaths] == ["000000000009-4-bottle", "000000000009-4-bottle-2"]
    s = scanpaths[0]
    assert (s.task, s.condition, s.subject) == ("bottle", "present", "4")
    assert s.extra == {"bbox": [10, 20, 30, 40], "split": "test", "RT": 812}
    assert s.image == "images/bottle/000000000009.jpg"
    np.testing.assert_array_equal(s.xy, [[400.0, 500.0]])
    assert report.source == "records" and report.dropped == Counter({"initial centre fixation": 2})


def test_rescaled_copy_warning_without_rescaling() -> None:
    record = {
        "name": "a.jpg",
        "subject": 1,
        "X": [256.0, 100.0, 400.0],
        "Y": [160.0, 50.0, 310.0],
        "T": [1, 2, 3],
        "length": 3,
    }
    with pytest.warns(UserWarning) as caught:
        scanpaths, report = convert_coco_freeview([record])
    assert any("pass width=512, height=320" in str(w.message) for w in caught)
    # in the wrong frame the centre fixation (256, 160) is not at the centre either: kept, and said
    np.testing.assert_array_equal(scanpaths[0].xy, [[256.0, 160.0], [100.0, 50.0], [400.0, 310.0]])
    assert "start away from the frame centre" in report.summary()
    assert scanpaths[0].width == 1680 and "rescaled copy" in report.summary()
    scanpaths, report = no_warnings(convert_coco_freeview, [record], width=512, height=320)
    assert (scanpaths[0].width, scanpaths[0].height) == (512, 320) and not report.notes
    np.testing.assert_array_equal(scanpaths[0].xy, [[100.0, 50.0], [400.0, 310.0]])


def test_freeview_drops_the_first_fixation_only_where_the_centre_fixation_lands() -> None:
    centre = {"name": "a.jpg", "subject": 1, "X": [850.0, 600.0], "Y": [510.0, 300.0], "T": [90, 200]}
    removed = {"name": "b.jpg", "subject": 1, "X": [600.0, 700.0], "Y": [300.0, 400.0], "T": [200, 210]}
    with pytest.warns(UserWarning, match=r"1 record\(s\) start away from the frame centre \(e.g. record 1\)"):
        scanpaths, report = convert_coco_freeview([centre, removed])
    np.testing.assert_array_equal(scanpaths[0].xy, [[600.0, 300.0]])
    np.testing.assert_array_equal(scanpaths[1].xy, [[600.0, 300.0], [700.0, 400.0]])  # its real first fixation kept
    assert report.dropped == Counter({"initial centre fixation": 1})


def test_fixations_on_the_padding_bars_are_counted_and_dropped_on_request() -> None:
    # a 4:3 photo fitted to 1680 x 1050 leaves bars x < 140 and x >= 1540
    record = {"name": "a.jpg", "subject": 1, "X": [840.0, 139.0, 140.0, 1539.0, 1540.0], "Y": [525.0] * 5}
    with pytest.warns(UserWarning, match=r"2 fixation\(s\) lie on the black side bars .*x < 140 or x >= 1540"):
        scanpaths, report = convert_coco_freeview([record])
    np.testing.assert_array_equal(scanpaths[0].xy[:, 0], [139.0, 140.0, 1539.0, 1540.0])
    scanpaths, report = no_warnings(convert_coco_freeview, [record], drop_bar_fixations=True)
    np.testing.assert_array_equal(scanpaths[0].xy[:, 0], [140.0, 1539.0])
    assert report.dropped["on the padding bars"] == 2
    assert report.examples["on the padding bars"] == ["record 0 fixation 1", "record 0 fixation 4"]


def test_wrong_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"record 0 has no \['X'\]"):
        convert_coco_freeview([{"name": "a.jpg", "subject": 1, "Y": [1.0]}])
    with pytest.raises(ValueError, match="has no \\['task'\\]"):
        convert_coco_search18(freeview_file(tmp_path))


def write_csv(tmp_path: Path) -> Path:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 10)).save(tmp_path / "b.png")
    path = tmp_path / "fix.csv"
    path.write_text(
        "image,subject,x,y,duration_ms\n"
        "a.png,s1,1,2,100\n"
        "b.png,s1,3,4,\n"
        "a.png,s2,5,6,50\n"
        "a.png,s1,7,8,120\n"
        "b.png,s1,abc,4,\n"
        "a.png,s2,nan,3,\n"
        "b.png,s1,25,5,\n"
    )
    return path


def test_csv_grouping_and_sizes_from_images(tmp_path: Path) -> None:
    scanpaths, report = convert_csv(write_csv(tmp_path), image_root=tmp_path)
    assert [(s.image, s.subject, s.width, s.height) for s in scanpaths] == [
        ("a.png", "s1", 40, 30),
        ("b.png", "s1", 20, 10),
        ("a.png", "s2", 40, 30),
    ]
    np.testing.assert_array_equal(scanpaths[0].xy, [[1.0, 2.0], [7.0, 8.0]])
    assert [f.duration_ms for f in scanpaths[0]] == [100.0, 120.0]
    assert scanpaths[1].fixations[0].duration_ms is None
    assert [s.id for s in scanpaths] == ["a-s1", "b-s1", "a-s2"]
    assert (report.records_read, report.scanpaths_written, report.fixations_kept) == (7, 3, 4)
    assert report.dropped == Counter({"non-numeric value": 1, "non-finite coordinate": 1, "off-image fixation": 1})
    assert report.examples == {
        "non-numeric value": ["line 6"],
        "non-finite coordinate": ["line 7"],
        "off-image fixation": ["line 8"],
    }


def test_csv_image_sizes_mapping_and_missing_size(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    scanpaths, _ = convert_csv(path, image_sizes={"a.png": (400, 300)}, image_root=tmp_path)
    assert [(s.width, s.height) for s in scanpaths] == [(400, 300), (20, 10), (400, 300)]
    with pytest.raises(ValueError, match=r"no size for image 'b.png'.*image_root="):
        convert_csv(path, image_sizes={"a.png": (400, 300)})


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metamergen")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_convert_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "fv.jsonl"
    args = make_parser().parse_args(
        [
            "convert",
            "coco-freeview",
            str(freeview_file(tmp_path)),
            "--out",
            str(out),
            "--pixels-per-degree",
            "35",
            "--name",
            "fv",
            "--image-root",
            str(tmp_path / "images"),
        ]
    )
    assert args.func(args) == 0
    assert read_scanpaths(out) == convert_coco_freeview(freeview_file(tmp_path))[0]
    info = read_info(out)
    assert (info.name, info.pixels_per_degree, info.image_root) == ("fv", 35.0, "../images")
    assert "length mismatch: 1" in info.notes
    assert "length mismatch: 1 records" in capsys.readouterr().out

    out = tmp_path / "csv.jsonl"
    args = make_parser().parse_args(
        ["convert", "csv", str(write_csv(tmp_path)), "--out", str(out), "--width", "50", "--height", "40"]
    )
    assert args.func(args) == 0
    assert [(s.width, len(s)) for s in read_scanpaths(out)] == [(50, 2), (50, 2), (50, 1)]

    args = make_parser().parse_args(
        ["convert", "coco-freeview", "x.json", "--out", str(out), "--pixels-per-degree", "0"]
    )
    with pytest.raises(SystemExit, match="pixels_per_degree"):
        args.func(args)


@pytest.mark.parametrize(
    "make, extra, expected",
    [
        (  # every record's X, Y, T and length disagree
            lambda d: d.joinpath("fv.json").write_text(
                json.dumps([{"name": "a.jpg", "subject": 1, "X": [600.0, 700.0], "Y": [400.0], "T": [5, 5]}])
            ),
            [],
            ["every one of the 1 records", "length mismatch: 1 records", "is this the right format?"],
        ),
        (  # one fixation per record, the forced centre one, dropped by default
            lambda d: d.joinpath("fv.json").write_text(
                json.dumps([{"name": "a.jpg", "subject": s, "X": [840.0], "Y": [525.0], "T": [90]} for s in (1, 2)])
            ),
            [],
            ["empty after filtering: 2 scanpaths", "initial centre fixation: 2 fixations", "--keep-initial-fixation"],
        ),
        (  # every fixation off a frame given too small
            lambda d: d.joinpath("fv.json").write_text(
                json.dumps([{"name": "a.jpg", "subject": 1, "X": [256.0, 900.0], "Y": [160.0, 600.0], "T": [9, 9]}])
            ),
            ["--width", "512", "--height", "320"],
            ["off-image fixation: 1 fixations", "--off-image clip"],
        ),
        (lambda d: d.joinpath("fv.json").write_text("[]"), [], ["holds no records"]),
    ],
)
def test_cli_convert_keeping_nothing_is_an_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, extra: list[str], expected: list[str]
) -> None:
    from metamergen.commands import main

    make(tmp_path)
    out = tmp_path / "out" / "fv.jsonl"
    assert main(["convert", "coco-freeview", str(tmp_path / "fv.json"), "--out", str(out), *extra]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("metamergen convert: error: no scanpath kept") and "Nothing was written" in err, err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "out").exists()


def test_cli_convert_csv_keeping_nothing_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metamergen.commands import main

    out = tmp_path / "fix.jsonl"
    for body, expected in (
        ("", "holds no records"),
        ("a.png,s1,abc,4\nb.png,s1,,5\n", "non-numeric value: 2 fixations"),
        (",s1,1,2\n", "missing image: 1 fixations"),
    ):
        (tmp_path / "fix.csv").write_text("image,subject,x,y\n" + body)
        assert (
            main(["convert", "csv", str(tmp_path / "fix.csv"), "--out", str(out), "--width", "9", "--height", "9"]) == 2
        )
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert "no scanpath kept" in err and expected in err, err
        assert not out.exists() and not (tmp_path / "dataset.json").exists()
