"""The procedural toy world: determinism, ground truth, scanpaths, files on disk, object measures."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from PIL import Image

from metamergen.commands.toyworld import main
from metamergen.demo.toyworld import (
    FLOOR_COLOURS,
    GROUND_COLOURS,
    MARK_COLOURS,
    OBJECT_COLOURS,
    SHAPES,
    SKY_COLOURS,
    WALL_COLOURS,
    ToyWorldConfig,
    generate_scene,
    object_attributes,
    object_colour_match,
    random_scanpath,
    read_objects,
    scene_scanpaths,
    scene_seeds,
    viewer_scanpath,
    write_split,
    write_world,
)
from metamergen.fixations.io import read_info, read_scanpaths, resolve_image


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ------------------------------------------------------------------------------------ scenes


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b = generate_scene(123), generate_scene(123)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.objects == b.objects and a.layout == b.layout and a.seed == 123
    others = [generate_scene(s) for s in (124, 125, 126)]
    assert all(o.image.tobytes() != a.image.tobytes() for o in others)
    # a generator works too (no seed to record)
    assert generate_scene(np.random.default_rng(5)).seed is None


def test_palettes_are_separable():
    tol = ToyWorldConfig().colour_tolerance
    for a, b in itertools.combinations(OBJECT_COLOURS.values(), 2):
        assert _dist(a, b) > 2 * tol
    layout = {**SKY_COLOURS, **GROUND_COLOURS, **WALL_COLOURS, **FLOOR_COLOURS, **MARK_COLOURS}
    for a in OBJECT_COLOURS.values():
        for b in layout.values():
            assert _dist(a, b) > 2 * tol


@pytest.mark.parametrize("size", [64, 96, 128])
def test_objects_inside_non_overlapping_and_boxes_match_pixels(size):
    cfg = ToyWorldConfig(size=size)
    k = size / 64
    layouts = set()
    for seed in range(40):
        scene = generate_scene(seed, cfg)
        assert scene.image.size == (size, size) and scene.image.mode == "RGB"
        layouts.add(scene.layout["kind"])
        assert 0 < scene.layout["horizon"] < size
        assert cfg.n_objects[0] - 1 <= len(scene.objects) <= cfg.n_objects[1]
        a = np.asarray(scene.image)
        inside_any = np.zeros(a.shape[:2], bool)
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert o.shape in SHAPES and OBJECT_COLOURS[o.colour] == o.rgb
            assert max(x1 - x0, y1 - y0) <= round(cfg.object_size[1] * k)
            assert max(x1 - x0, y1 - y0) >= round(cfg.object_size[0] * k) - 2
            assert o.centre == ((x0 + x1) / 2, (y0 + y1) / 2)
            # the object's drawn pixels (colour, or its mark) fill the box tightly
            sub = a[y0:y1, x0:x1]
            drawn = (sub == o.rgb).all(-1)
            if o.mark is not None:
                drawn |= (sub == o.mark_rgb).all(-1)
            assert drawn.mean() > 0.3
            assert drawn[0].any() and drawn[-1].any() and drawn[:, 0].any() and drawn[:, -1].any()
            assert (sub == o.rgb).all(-1).sum() > 0.25 * drawn.size
            assert o.salience > 0
            inside_any[y0:y1, x0:x1] = True
        for o, p in itertools.combinations(scene.objects, 2):
            assert not _overlap(o.box, p.box)
        # no object colour outside the boxes
        outside = a[~inside_any]
        for rgb in OBJECT_COLOURS.values():
            assert not (outside == rgb).all(-1).any()
    assert layouts == {"indoor", "outdoor"}


def test_generation_is_fast():
    t = time.perf_counter()
    for s in range(100):
        generate_scene(s)
    assert (time.perf_counter() - t) / 100 < 0.02  # ~1 ms in practice; loose for shared machines


def test_config_validation():
    with pytest.raises(ValueError, match="size"):
        ToyWorldConfig(size=8)
    with pytest.raises(ValueError, match="shapes"):
        ToyWorldConfig(shapes=("blob",))
    with pytest.raises(ValueError, match="p_background"):
        ToyWorldConfig(p_background=2.0)
    cfg = ToyWorldConfig(size=96)
    assert cfg.pixels_per_degree == 24.0 and ToyWorldConfig().pixels_per_degree == 16.0
    assert ToyWorldConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------------ scanpaths


def test_viewer_lands_on_objects_most_salient_first():
    cfg = ToyWorldConfig()
    sigma = cfg.fixation_jitter
    near = total = 0
    for seed in range(60):
        scene = generate_scene(seed, cfg)
        v = viewer_scanpath(scene, seed, cfg, image="x.png", id=f"s{seed}")
        assert len(v) == cfg.n_fixations and v.subject == "toy-viewer" and v.condition == "viewer"
        assert v.on_image.all()
        d = np.array([f.duration_ms for f in v])
        on = np.array([f.onset_ms for f in v])
        assert ((d >= 200) & (d <= 400)).all() and (np.diff(on) > 0).all()
        targets = v.extra["targets"]
        best = max(range(len(scene.objects)), key=lambda i: scene.objects[i].salience)
        first_object = next(t for t in targets if t >= 0)
        assert first_object == best
        for f in v:
            total += 1
            near += any(
                o.box[0] - 3 * sigma <= f.x < o.box[2] + 3 * sigma
                and o.box[1] - 3 * sigma <= f.y < o.box[3] + 3 * sigma
                for o in scene.objects
            )
    assert near / total > 0.8


def test_visit_order_follows_salience_without_noise():
    cfg = ToyWorldConfig(p_refixation=0.0, p_background=0.0)
    for seed in range(20):
        scene = generate_scene(seed, cfg)
        targets = viewer_scanpath(scene, seed, cfg).extra["targets"]
        first_visits = list(dict.fromkeys(targets))
        sal = [scene.objects[i].salience for i in first_visits]
        assert sal == sorted(sal, reverse=True)
        assert len(first_visits) == len(scene.objects)  # 10 fixations >= 5 objects


def test_random_scanpaths_matched_and_uniform():
    cfg = ToyWorldConfig()
    pts, in_box_viewer, in_box_random = [], 0, 0
    for seed in range(80):
        scene = generate_scene(seed, cfg)
        paths = scene_scanpaths(scene, image=f"{seed}.png", scene_id=f"scene-{seed}", viewers=2)
        assert [p.condition for p in paths] == ["viewer", "random"] * 2
        assert len({p.id for p in paths}) == 4
        for v, r in zip(paths[::2], paths[1::2]):
            assert r.subject == "random" and r.id == f"{v.id}-random" and r.image == v.image
            assert len(r) == len(v)
            assert [f.duration_ms for f in r] == [f.duration_ms for f in v]
            pts.append(r.xy)
            boxes = [o.box for o in scene.objects]
            in_box_random += sum(any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in boxes) for x, y in r.xy)
            in_box_viewer += sum(any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in boxes) for x, y in v.xy)
    xy = np.concatenate(pts)
    assert (xy >= 0).all() and (xy < 64).all()
    counts = np.histogram2d(xy[:, 0], xy[:, 1], bins=2, range=[[0, 64], [0, 64]])[0].ravel()
    expected = len(xy) / 4
    assert ((counts - expected) ** 2 / expected).sum() < 16.3  # chi2(3) p ~ 0.001
    assert in_box_viewer > 3 * in_box_random
    # scanpath randomness is separate from the scene's and repeatable
    s = generate_scene(7)
    assert scene_scanpaths(s, image="a", scene_id="a") == scene_scanpaths(s, image="a", scene_id="a")
    v = viewer_scanpath(s, 1)
    assert random_scanpath(v, 3) == random_scanpath(v, 3) and random_scanpath(v, 3) != random_scanpath(v, 4)


# ------------------------------------------------------------------------------------ on disk


def test_write_split_loads_back(tmp_path):
    cfg = ToyWorldConfig(size=96)
    summary = write_split(tmp_path / "split", 6, seed=3, config=cfg, viewers_per_scene=2)
    assert summary["n_scenes"] == 6 and summary["n_scanpaths"] == 24
    path = tmp_path / "split" / "scanpaths.jsonl"
    scanpaths = read_scanpaths(path)
    info = read_info(path)
    assert info.image_root == "images" and info.source == "metamergen.toyworld"
    assert info.pixels_per_degree == 24.0 and info.extra["config"]["size"] == 96
    assert len(scanpaths) == 24 and len({s.id for s in scanpaths}) == 24
    assert {s.condition for s in scanpaths} == {"viewer", "random"}
    objects = read_objects(tmp_path / "split" / "objects.jsonl")
    assert len(objects) == 6
    for s in scanpaths:
        image_path = resolve_image(info, s.image, path)
        assert image_path.is_file()
        with Image.open(image_path) as im:
            assert im.size == (96, 96) == (s.width, s.height)
        rec = objects[s.image]
        scene = generate_scene(rec["seed"], cfg)
        assert rec["objects"] == scene.objects and rec["layout"] == scene.layout
        with Image.open(image_path) as im:
            assert im.convert("RGB").tobytes() == scene.image.tobytes()
    assert not list((tmp_path / "split").rglob("*.tmp"))


def test_write_world_disjoint_and_reproducible(tmp_path):
    out = write_world(tmp_path / "w", 4, 3, seed=5)
    train = read_objects(tmp_path / "w" / "train" / "objects.jsonl")
    test = read_objects(tmp_path / "w" / "test" / "objects.jsonl")
    assert len(train) == 4 and len(test) == 3
    assert not {r["seed"] for r in train.values()} & {r["seed"] for r in test.values()}
    assert not set(train) & set(test)
    assert out["train"]["seed"] == 10 and out["test"]["seed"] == 11
    assert set(scene_seeds(10, 10**6)).isdisjoint(scene_seeds(11, 10))
    write_world(tmp_path / "w2", 4, 3, seed=5)
    for split in ("train", "test"):
        for name in ("scanpaths.jsonl", "objects.jsonl", "dataset.json"):
            assert (tmp_path / "w" / split / name).read_bytes() == (tmp_path / "w2" / split / name).read_bytes()
        for png in (tmp_path / "w" / split / "images").iterdir():
            assert png.read_bytes() == (tmp_path / "w2" / split / "images" / png.name).read_bytes()


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--train", "2", "--test", "1", "--seed", "1", "--size", "64"]) == 0
    assert "train: 2 scenes" in capsys.readouterr().out
    info = json.loads((tmp_path / "cli" / "test" / "dataset.json").read_text())
    assert info["extra"]["n_scenes"] == 1
    assert len(list((tmp_path / "cli" / "train" / "images").glob("*.png"))) == 2


# ------------------------------------------------------------------------------------ measures


def test_colour_measure_perfect_on_originals_and_fails_when_recoloured():
    n = shape_ok = 0
    for seed in range(30):
        scene = generate_scene(seed)
        for o in scene.objects:
            m = object_colour_match(scene.image, o)
            assert m.match and m.distance == 0.0 and m.measured_colour == o.colour
            a = object_attributes(scene.image, o.box)
            assert a.colour == o.colour and a.fraction > 0.25 and _dist(a.rgb, o.rgb) < 1e-9
            n += 1
            shape_ok += a.shape == o.shape
            # the same at another resolution (a 4x generation), box given in the scene's frame
            big = scene.image.resize((256, 256), Image.NEAREST)
            assert object_colour_match(big, o, frame=(64, 64)).match
        # recolour one object: its measure fails, the others are untouched
        o = scene.objects[0]
        a = np.asarray(scene.image).copy()
        x0, y0, x1, y1 = o.box
        sub = a[y0:y1, x0:x1]
        new = next(c for name, c in OBJECT_COLOURS.items() if _dist(c, o.rgb) > 120)
        sub[(sub == o.rgb).all(-1)] = new
        m = object_colour_match(a, o)
        assert not m.match and m.distance > 80
        # a scene with the object erased (layout only): no palette colour found
        a[y0:y1, x0:x1] = a[y0, x0] if not (a[y0, x0] == new).all() else (128, 128, 128)
        erased = object_attributes(a, o.box)
        assert erased.colour is None and erased.shape is None
        assert not object_colour_match(a.astype(np.float32) / 255.0, o).match
    assert shape_ok / n > 0.9
