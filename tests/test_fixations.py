"""Tests for metamergen.fixations: validation, off-image policies, serialisation, random controls."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from metamergen.fixations.records import Fixation, Scanpath, matched_random, random_fixations

W, H = 640, 480


def _scanpath(**kwargs) -> Scanpath:
    defaults = dict(
        width=W,
        height=H,
        duration_ms=[200.0, 310.5, 150.0],
        onset_ms=[0.0, 220.0, 560.0],
        image="000000000139.jpg",
        id="sp-1",
        subject="s01",
        task="freeview",
        condition="own",
        extra={"split": "train", "bbox": [1, 2, 3, 4]},
    )
    defaults.update(kwargs)
    return Scanpath.from_xy([320.0, 10.5, 600.25], [240.0, 20.0, 470.0], **defaults)


# ---------------------------------------------------------------- Fixation validation


@pytest.mark.parametrize("bad, word", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf")])
def test_fixation_rejects_non_finite(bad: float, word: str) -> None:
    with pytest.raises(ValueError, match=rf"Fixation\.x must be finite.*{word}"):
        Fixation(bad, 1.0)
    with pytest.raises(ValueError, match=r"Fixation\.y must be finite"):
        Fixation(1.0, bad)


@pytest.mark.parametrize("bad, name", [("3", "str"), (True, "bool"), (np.bool_(False), "bool")])
def test_fixation_rejects_non_numbers(bad: object, name: str) -> None:
    with pytest.raises(TypeError, match=rf"Fixation\.x must be a real number, got {name}"):
        Fixation(bad, 1.0)


def test_fixation_coerces_numbers_and_allows_negative_coordinates() -> None:
    f = Fixation(np.int64(3), np.float32(-0.5), duration_ms=np.int32(250), onset_ms=0)
    assert (f.x, f.y, f.duration_ms, f.onset_ms) == (3.0, -0.5, 250.0, 0.0)
    assert all(type(v) is float for v in (f.x, f.y, f.duration_ms, f.onset_ms))


def test_fixation_rejects_negative_times() -> None:
    with pytest.raises(ValueError, match=r"duration_ms must be >= 0.*-1"):
        Fixation(1.0, 1.0, duration_ms=-1.0)
    with pytest.raises(ValueError, match=r"onset_ms must be >= 0"):
        Fixation(1.0, 1.0, onset_ms=-5.0)
    with pytest.raises(ValueError, match=r"duration_ms must be finite"):
        Fixation(1.0, 1.0, duration_ms=math.nan)


# ---------------------------------------------------------------- Scanpath construction


def test_from_xy_mismatched_lengths_names_both() -> None:
    with pytest.raises(ValueError, match=r"x has 3.*y has 2"):
        Scanpath.from_xy([1, 2, 3], [1, 2], width=W, height=H)
    with pytest.raises(ValueError, match=r"duration_ms has 1"):
        Scanpath.from_xy([1, 2], [1, 2], duration_ms=[100], width=W, height=H)


def test_from_xy_reports_index_of_bad_value() -> None:
    with pytest.raises(ValueError, match=r"fixation 1: Fixation\.y must be finite"):
        Scanpath.from_xy([1.0, 2.0], [1.0, math.nan], width=W, height=H)
    with pytest.raises(TypeError, match=r"fixation 0: Fixation\.x must be a real number, got str"):
        Scanpath.from_xy(["a"], [1.0], width=W, height=H)


@pytest.mark.parametrize("bad", [0, -10])
def test_non_positive_size_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match=r"width must be > 0"):
        Scanpath((), bad, H)
    with pytest.raises(ValueError, match=r"height must be > 0"):
        Scanpath.from_xy([], [], width=W, height=bad)


def test_size_type_checks() -> None:
    with pytest.raises(TypeError, match=r"width must be a positive integer"):
        Scanpath((), True, H)
    with pytest.raises(ValueError, match=r"whole number of pixels, got 640\.5"):
        Scanpath((), 640.5, H)
    sp = Scanpath((), np.int64(640), 480.0)
    assert (sp.width, sp.height) == (640, 480) and type(sp.height) is int


def test_fixations_must_be_fixation_objects() -> None:
    with pytest.raises(TypeError, match=r"fixations\[1\] is a tuple"):
        Scanpath([Fixation(1, 1), (2, 2)], W, H)
    sp = Scanpath([Fixation(1, 1)], W, H)
    assert isinstance(sp.fixations, tuple)


def test_empty_scanpath_is_valid() -> None:
    for sp in (
        Scanpath.from_points([], width=W, height=H),
        Scanpath.from_points(np.zeros((0, 2)), width=W, height=H),
        Scanpath.from_xy([], [], width=W, height=H),
    ):
        assert len(sp) == 0
        assert sp.xy.shape == (0, 2) and sp.xy.dtype == np.float64
        assert sp.on_image.shape == (0,)
        assert sp.prefix(0) == sp
        assert Scanpath.from_dict(json.loads(json.dumps(sp.to_dict()))) == sp


def test_from_points_shape_and_dtype() -> None:
    sp = Scanpath.from_points([[1.5, 2.5], [3, 4]], width=W, height=H, id="p")
    np.testing.assert_array_equal(sp.xy, [[1.5, 2.5], [3.0, 4.0]])
    assert sp.id == "p"
    with pytest.raises(ValueError, match=r"shape \(N, 2\).*got shape \(2, 3\)"):
        Scanpath.from_points(np.zeros((2, 3)), width=W, height=H)
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        Scanpath.from_points([1.0, 2.0, 3.0], width=W, height=H)
    with pytest.raises(TypeError, match=r"dtype bool"):
        Scanpath.from_points([[True, False]], width=W, height=H)


# ---------------------------------------------------------------- off-image policies

# x == width and y == -0.5 are off the image; x == 0 and x == width - 0.01 are on it.
OFF_X = [0.0, W, 100.0, W - 0.01, 50.0]
OFF_Y = [10.0, 10.0, -0.5, H - 0.01, 0.0]
ON_MASK = [True, False, False, True, True]


def test_on_image_mask_boundaries() -> None:
    sp = Scanpath(tuple(Fixation(x, y) for x, y in zip(OFF_X, OFF_Y)), W, H)
    np.testing.assert_array_equal(sp.on_image, ON_MASK)


def test_drop_removes_exactly_off_image_and_warns_with_count() -> None:
    with pytest.warns(UserWarning, match=r"id='d1'.*dropped 2 of 5"):
        sp = Scanpath.from_xy(OFF_X, OFF_Y, width=W, height=H, id="d1")
    expected = [(x, y) for x, y, on in zip(OFF_X, OFF_Y, ON_MASK) if on]
    np.testing.assert_array_equal(sp.xy, expected)


def test_no_warning_when_nothing_is_off_image() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp = Scanpath.from_xy([0.0, W - 0.01], [0.0, H - 0.01], width=W, height=H)
    assert len(sp) == 2


def test_clip_keeps_count_and_moves_points_inside() -> None:
    durations = [100.0, 200.0, 300.0, 400.0, 500.0]
    with pytest.warns(UserWarning, match=r"clipped.* 2 of 5"):
        sp = Scanpath.from_xy(OFF_X, OFF_Y, duration_ms=durations, width=W, height=H, off_image="clip")
    assert len(sp) == 5
    assert sp.on_image.all()
    xy = sp.xy
    assert W - 1e-9 < xy[1, 0] < W and xy[1, 1] == 10.0
    assert xy[2, 0] == 100.0 and xy[2, 1] == 0.0
    np.testing.assert_array_equal(xy[ON_MASK], np.c_[OFF_X, OFF_Y][ON_MASK])
    assert [f.duration_ms for f in sp] == durations


def test_error_policy_lists_offenders() -> None:
    with pytest.raises(ValueError, match=r"2 of 5 fixations.*\(1, 640\.0, 10\.0\).*\(2, 100\.0, -0\.5\)"):
        Scanpath.from_xy(OFF_X, OFF_Y, width=W, height=H, off_image="error")


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError, match=r"off_image must be one of"):
        Scanpath.from_xy([1.0], [1.0], width=W, height=H, off_image="keep")  # type: ignore[arg-type]


# ---------------------------------------------------------------- prefix


def test_prefix_keeps_order_and_metadata() -> None:
    sp = _scanpath()
    head = sp.prefix(2)
    assert head.fixations == sp.fixations[:2]
    for name in ("width", "height", "image", "id", "subject", "task", "condition", "extra"):
        assert getattr(head, name) == getattr(sp, name)
    assert len(sp.prefix(3)) == 3 and len(sp.prefix(0)) == 0
    with pytest.raises(ValueError, match=r"first 4 fixations.*only 3"):
        sp.prefix(4)
    with pytest.raises(ValueError, match=r">= 0"):
        sp.prefix(-1)


# ---------------------------------------------------------------- serialisation


def test_to_dict_from_dict_round_trip_via_json() -> None:
    sp = _scanpath()
    record = sp.to_dict()
    assert list(record) == [
        "id",
        "image",
        "width",
        "height",
        "subject",
        "task",
        "condition",
        "fixations",
        "extra",
    ]
    text = json.dumps(record)
    back = Scanpath.from_dict(json.loads(text))
    assert back == sp
    assert back.to_dict() == record


def test_to_dict_omits_none_and_empty_extra() -> None:
    sp = Scanpath.from_xy([1.0, 2.0], [3.0, 4.0], duration_ms=[100, None], width=W, height=H)
    assert sp.to_dict() == {
        "width": W,
        "height": H,
        "fixations": [{"x": 1.0, "y": 3.0, "duration_ms": 100.0}, {"x": 2.0, "y": 4.0}],
    }


def test_to_dict_converts_numpy_in_extra() -> None:
    sp = Scanpath((), W, H, extra={"bbox": np.array([1, 2]), "ppd": np.float32(35.0)})
    record = sp.to_dict()
    assert record["extra"] == {"bbox": [1, 2], "ppd": 35.0}
    json.dumps(record)


def test_from_dict_accepts_null_optionals() -> None:
    record = {
        "id": "n",
        "image": None,
        "width": W,
        "height": H,
        "subject": None,
        "task": None,
        "condition": None,
        "extra": None,
        "fixations": [{"x": 1.0, "y": 2.0, "duration_ms": None, "onset_ms": None}],
    }
    sp = Scanpath.from_dict(record)
    assert sp.extra == {} and sp.image is None and sp.fixations == (Fixation(1.0, 2.0),)


@pytest.mark.parametrize("missing", ["width", "height", "fixations"])
def test_from_dict_missing_key_named(missing: str) -> None:
    record = _scanpath().to_dict()
    del record[missing]
    with pytest.raises(KeyError, match=rf"id='sp-1'.*'{missing}'"):
        Scanpath.from_dict(record)


def test_from_dict_rejects_bad_fixation_records() -> None:
    record = _scanpath().to_dict()
    del record["fixations"][1]["y"]
    with pytest.raises(KeyError, match=r"id='sp-1'.*fixations\[1\] has no 'y'"):
        Scanpath.from_dict(record)
    record = _scanpath().to_dict()
    record["name"] = "x.jpg"
    with pytest.raises(ValueError, match=r"unknown keys \['name'\].*extra"):
        Scanpath.from_dict(record)


def test_from_dict_applies_policy() -> None:
    record = {"id": "o", "width": 10, "height": 10, "fixations": [{"x": 5, "y": 5}, {"x": 12, "y": 5}]}
    with pytest.warns(UserWarning, match=r"dropped 1 of 2"):
        assert len(Scanpath.from_dict(record)) == 1
    with pytest.raises(ValueError, match=r"id='o'.*1 of 2"):
        Scanpath.from_dict(record, off_image="error")


# ---------------------------------------------------------------- random controls


def test_random_fixations_deterministic_and_inside() -> None:
    a = random_fixations(50, W, H, generator=7, image="a.jpg")
    b = random_fixations(50, W, H, generator=7, image="a.jpg")
    c = random_fixations(50, W, H, generator=8, image="a.jpg")
    assert len(a) == 50 and a.image == "a.jpg" and (a.width, a.height) == (W, H)
    assert a == b
    assert not np.array_equal(a.xy, c.xy)
    assert a.on_image.all()
    # Spread over the whole image, not a corner.
    assert a.xy[:, 0].max() > W / 2 and a.xy[:, 1].max() > H / 2
    gen = np.random.default_rng(7)
    np.testing.assert_array_equal(random_fixations(50, W, H, generator=gen).xy, a.xy)
    assert len(random_fixations(0, W, H, generator=1)) == 0
    with pytest.raises(ValueError, match=r">= 0"):
        random_fixations(-1, W, H)


def test_matched_random_matches_count_timing_and_metadata() -> None:
    sp = _scanpath()
    ctrl = matched_random(sp, generator=3)
    assert len(ctrl) == len(sp)
    assert ctrl.id == "sp-1-random" and ctrl.condition == "random"
    for name in ("image", "width", "height", "subject", "task", "extra"):
        assert getattr(ctrl, name) == getattr(sp, name)
    assert [f.duration_ms for f in ctrl] == [f.duration_ms for f in sp]
    assert [f.onset_ms for f in ctrl] == [f.onset_ms for f in sp]
    assert not np.array_equal(ctrl.xy, sp.xy)
    assert ctrl.on_image.all()
    assert matched_random(sp, generator=3) == ctrl
