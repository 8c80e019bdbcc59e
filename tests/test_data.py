"""The canonical scanpath JSON Lines format, its sidecar and the Hugging Face datasets route."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from metamergen.fixations.io import (
    DatasetInfo,
    load_scanpath_dataset,
    read_info,
    read_scanpaths,
    resolve_image,
    scanpath_from_row,
    write_scanpaths,
)
from metamergen.fixations.records import Scanpath


def sample_scanpaths() -> list[Scanpath]:
    """Scanpaths whose optional keys differ from line to line (the hard case for datasets)."""
    return [
        Scanpath.from_xy(
            [1.5, 3.0],
            [2.0, 4.25],
            duration_ms=[100.0, 250.5],
            width=10,
            height=5,
            image="a.png",
            id="a-1",
            subject="1",
            task="free",
            extra={"split": "train", "bbox": [1, 2, 3, 4]},
        ),
        Scanpath.from_xy([9.0], [0.0], onset_ms=[12.0], width=10, height=5, id="b", condition="x"),
        Scanpath.from_xy([], [], width=7, height=3, image="c.png", id="c", extra={"nested": {"k": "v"}}),
    ]


def test_jsonl_round_trip_with_sidecar(tmp_path: Path) -> None:
    info = DatasetInfo(
        name="toy", image_root="imgs", pixels_per_degree=32.5, source="unit test", extra={"display": "LCD"}
    )
    out = write_scanpaths(tmp_path / "sub" / "toy.jsonl", sample_scanpaths(), info)
    assert out == tmp_path / "sub" / "toy.jsonl"
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [s.to_dict() for s in sample_scanpaths()]
    assert read_scanpaths(out) == sample_scanpaths()
    assert (tmp_path / "sub" / "dataset.json").is_file()
    assert read_info(out) == info
    assert resolve_image(info, "a.png", out) == tmp_path / "sub" / "imgs" / "a.png"
    assert resolve_image(None, "a.png", out) == tmp_path / "sub" / "a.png"
    assert resolve_image(info, str(tmp_path / "abs.png"), out) == tmp_path / "abs.png"
    with pytest.raises(ValueError, match="no 'image' field"):
        resolve_image(info, None, out)


def test_no_sidecar_without_info(tmp_path: Path) -> None:
    out = write_scanpaths(tmp_path / "x.jsonl", sample_scanpaths())
    assert read_info(out) is None
    assert not (tmp_path / "dataset.json").exists()


def test_dataset_info_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_pixels"):
        DatasetInfo(coordinate_frame="display_pixels")
    for bad in (0, -3.0, float("nan")):
        with pytest.raises(ValueError, match="pixels_per_degree"):
            DatasetInfo(pixels_per_degree=bad)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x", "ppd": 30}))
    with pytest.raises(ValueError, match=r"unknown keys \['ppd'\]"):
        DatasetInfo.read(tmp_path / "dataset.json")


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_scanpaths(tmp_path / "d.jsonl", sample_scanpaths()[:2])
    good = path.read_text()
    path.write_text(good + "\n" + '{"id": "broken", "width": 10, \n')  # line 3 blank, line 4 bad JSON
    with pytest.raises(ValueError, match=r"d\.jsonl, line 4: "):
        read_scanpaths(path)
    path.write_text(good + '{"id": "nowidth", "height": 5, "fixations": []}\n')
    with pytest.raises(ValueError, match=r"line 3: .*'width'"):
        read_scanpaths(path)


def test_non_strict_skips_and_counts(tmp_path: Path) -> None:
    a, b, _ = sample_scanpaths()
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(a.to_dict()), "not json", "", "[1, 2]", json.dumps(b.to_dict())]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_scanpaths(path, strict=False)
    assert got == [a, b]
    assert len(caught) == 1
    assert "skipped 2 malformed lines (lines 2, 4)" in str(caught[0].message)


def test_off_image_fixations_give_one_summary_warning(tmp_path: Path) -> None:
    records = [
        {"width": 10, "height": 5, "fixations": [{"x": 11, "y": 1}, {"x": 1, "y": 1}]},
        {"width": 10, "height": 5, "fixations": [{"x": -1, "y": 1}]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(UserWarning, match="dropped 2 off-image fixations in 2 scanpaths") as caught:
        got = read_scanpaths(path)
    assert len(caught) == 1
    assert [len(s) for s in got] == [1, 0]
    with pytest.raises(ValueError, match="line 1: .*off the image"):
        read_scanpaths(path, off_image="error")


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_round_trip(tmp_path: Path, streaming: bool) -> None:
    path = write_scanpaths(tmp_path / "d.jsonl", sample_scanpaths())
    ds = load_scanpath_dataset(path, streaming=streaming, cache_dir=str(tmp_path / "cache"))
    rows = list(ds)
    assert all(isinstance(row, dict) for row in rows)
    assert [scanpath_from_row(row) for row in rows] == sample_scanpaths()
