"""Studies (``metamergen generate``): manifest, reproducibility, resume, random control, one encode
per scene, conditions, and bad inputs rejected before anything is written. Offline, tiny pipeline."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metamergen.commands.generate import main as generate_main
from metamergen.fixations.io import DatasetInfo, write_scanpaths
from metamergen.fixations.records import Fixation, Scanpath
from metamergen.study.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, read_manifest
from metamergen.study.plan import StudySettings, output_size, plan_study
from metamergen.study.run import run_study
from metamergen.study.scenes import load_fixation_list_scene, load_scanpath_scenes


class CountingPipe:
    """Delegates to a pipeline, recording encode_scene and __call__ (optionally failing at call n)."""

    def __init__(self, pipe, fail_at_call: int | None = None):
        self.pipe, self.fail_at_call = pipe, fail_at_call
        self.encodes: list[tuple[int, int]] = []
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def encode_scene(self, image, **kw):
        self.encodes.append(image.size)
        return self.pipe.encode_scene(image, **kw)

    def __call__(self, **kw):
        if self.fail_at_call is not None and len(self.calls) == self.fail_at_call:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(kw)
        return self.pipe(**kw)


def write_scene(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_dataset(root: Path) -> Path:
    """Two scenes: A (48x32) with lists a (3 fixations) and b (1), B (40x40) with list c (2 on-image
    fixations + 1 off-image). Images in root/images, scanpaths in root/fix with a sidecar."""
    write_scene(root / "images" / "A.png", 48, 32, 0)
    write_scene(root / "images" / "B.png", 40, 40, 1)
    scanpaths = [
        Scanpath.from_points([[5, 5], [20, 10], [40, 30]], width=48, height=32, image="A.png", id="a", subject="s1"),
        Scanpath.from_points([[30, 20]], width=48, height=32, image="A.png", id="b", subject="s2"),
        Scanpath(  # the constructor keeps off-image fixations as given
            (Fixation(10, 30), Fixation(55, 3), Fixation(39.5, 0)), 40, 40, image="B.png", id="c", subject="s1"
        ),
    ]
    return write_scanpaths(root / "fix" / "scanpaths.jsonl", scanpaths, DatasetInfo(image_root="../images"))


SETTINGS = StudySettings(
    prefixes=(1, 2),
    hypotheses=2,
    conditions=("both", "foveal", "peripheral"),
    random_control=True,
    seed=7,
    steps=1,
    height=16,
    width=16,
)


@pytest.fixture(scope="module")
def study(pipe, tmp_path_factory):
    """One study run through the library, with encoder passes and pipeline calls counted."""
    root = tmp_path_factory.mktemp("study")
    jsonl = write_dataset(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scenes = load_scanpath_scenes(jsonl)
    report: Counter = Counter()
    jobs = plan_study(scenes, SETTINGS, model="tiny-random", pipe=pipe, report=report)
    counting = CountingPipe(pipe)
    forwards = []
    hook = pipe.image_encoder.register_forward_hook(lambda *a: forwards.append(1))
    try:
        summary = run_study(counting, jobs, root / "out", batch_size=4, progress=False)
    finally:
        hook.remove()
    rows = read_manifest(root / "out" / MANIFEST_NAME)
    return dict(
        root=root,
        jsonl=jsonl,
        scenes=scenes,
        jobs=jobs,
        report=report,
        pipe=counting,
        forwards=len(forwards),
        summary=summary,
        rows=rows,
        warnings=[str(w.message) for w in caught],
    )


# --------------------------------------------------------------------------- manifest


def test_manifest_is_complete(study):
    rows, out = study["rows"], study["root"] / "out"
    # lists x prefixes: a -> 1, 2; b -> 1 (2 is longer than b: skipped); c -> 1, 2 (off-image one dropped)
    viewer_lists_prefixes = 5
    expected = viewer_lists_prefixes * 2 * len(SETTINGS.conditions) * SETTINGS.hypotheses  # x2: random control
    assert len(rows) == expected == study["summary"].generated == 60
    assert study["report"]["prefix longer than the fixation list"] == 2  # b's prefix 2, viewer and random
    assert len({r["image_id"] for r in rows}) == len(rows)
    for row in rows:
        assert list(row) == list(MANIFEST_COLUMNS)
        assert (row["encoder_canvas"], row["encoder_patch"]) == (112, 14)  # the tiny model's frame, recorded
        assert row["path"] == f"images/{row['image_id']}.png" and Path(row["path"]).stem == row["image_id"]
        with Image.open(out / row["path"]) as im:
            assert im.size == (16, 16)
        assert row["n_fixations"] == len(row["fixations"]) == row["prefix"]
        assert Path(row["scene"]).is_absolute() and Path(row["scene"]).name == row["scene_id"]
        assert (row["steps"], row["height"], row["width"], row["model"]) == (1, 16, 16, "tiny-random")
        assert row["model_revision"] is None and row["metamergen_version"]
        assert row["guidance"] == "cfg++" and row["guidance_scale"] == 0.6  # resolved default, not null
        assert row["subject"] == {"a": "s1", "b": "s2", "c": "s1"}[row["scanpath_id"]]
        assert isinstance(row["seed"], int) and 0 <= row["seed"] < 2**31
    assert not list(out.rglob("*.tmp"))
    # off-image policy (drop): the warning says how many; no fixation used lies outside its image
    assert any("dropped 1 off-image" in w for w in study["warnings"])
    for row in rows:
        w, h = (48, 32) if row["scene_id"] == "A.png" else (40, 40)
        assert all(0 <= x < w and 0 <= y < h for x, y in row["fixations"])


def test_each_scene_is_encoded_once(study):
    assert len(study["pipe"].encodes) == 2  # one encode_scene per scene
    assert study["forwards"] == 2 * 2  # sharp + peripheral DINOv2 pass per scene, nothing else
    assert study["summary"].scenes_encoded == 2
    # batches never mix scenes or conditions, and hold at most batch_size images with one generator each
    for call in study["pipe"].calls:
        assert len(call["fixations"]) == len(call["generator"]) <= 4 and call["num_images_per_prompt"] == 1


def test_conditions_set_the_scales_and_the_dropped_stream(study):
    # "foveal" / "peripheral" are the dropped ablations by default: the other stream's tokens are
    # zeroed through its resampler (training's dropout), both scales stay as given
    expected = {
        "both": ((1.2, 0.7), ()),
        "foveal": ((1.2, 0.7), ("peripheral",)),
        "peripheral": ((1.2, 0.7), ("foveal",)),
    }
    for row in study["rows"]:
        assert (row["foveal_scale"], row["peripheral_scale"]) == expected[row["condition"]][0]
    for job in study["jobs"]:
        assert job.drop_streams == expected[job.condition][1]
    seen = {(c["foveal_scale"], c["peripheral_scale"], tuple(c["drop_streams"])) for c in study["pipe"].calls}
    assert seen == {(*scales, drop) for scales, drop in expected.values()}  # what the pipeline was given
    by_condition = Counter(r["condition"] for r in study["rows"])
    assert by_condition == {c: 20 for c in expected}


def test_off_and_dropped_ablations_are_named_conditions(pipe, tmp_path):
    from metamergen.study.plan import CONDITIONS, condition_streams

    scenes = load_fixation_list_scene(write_scene(tmp_path / "s.png", 40, 40, 3), [[5, 5], [30, 20]])
    conditions = ("both", "peripheral", "peripheral:dropped", "peripheral:off", "foveal:dropped", "foveal:off")
    settings = StudySettings(conditions=conditions, seed=1, steps=2, height=16, width=16)
    jobs = {j.condition: j for j in plan_study(scenes, settings, model="tiny-random", pipe=pipe)}
    assert {c: (jobs[c].foveal_scale, jobs[c].peripheral_scale, jobs[c].drop_streams) for c in conditions} == {
        "both": (1.2, 0.7, ()),
        "peripheral": (1.2, 0.7, ("foveal",)),
        "peripheral:dropped": (1.2, 0.7, ("foveal",)),
        "peripheral:off": (0.0, 0.7, ()),
        "foveal:dropped": (1.2, 0.7, ("peripheral",)),
        "foveal:off": (1.2, 0.0, ()),
    }
    assert all(":" not in j.image_id for j in jobs.values()) and len({j.image_id for j in jobs.values()}) == 6
    assert {condition_streams(c) for c in ("foveal", "foveal:dropped")} == {("foveal", "dropped")}
    assert set(conditions) | {"foveal"} == set(CONDITIONS)
    run_study(pipe, list(jobs.values()), tmp_path / "out", progress=False)
    pixels = {c: np.asarray(Image.open(tmp_path / "out" / j.path), dtype=np.int16) for c, j in jobs.items()}
    assert np.array_equal(pixels["peripheral"], pixels["peripheral:dropped"])  # the default, paired noise
    for a, b in [("peripheral:dropped", "peripheral:off"), ("foveal:dropped", "foveal:off"), ("both", "peripheral")]:
        assert np.abs(pixels[a] - pixels[b]).max() > 0, (a, b)
    with pytest.raises(ValueError, match="conditions must be"):
        StudySettings(conditions=("foveal:zero",))


def test_random_control_matches_the_viewer_counts(study):
    rows = study["rows"]

    def key(r):
        return (r["scene_id"], r["scanpath_id"], r["prefix"], r["condition"], r["hypothesis"], r["n_fixations"])

    viewer = Counter(key(r) for r in rows if r["fixation_source"] == "viewer")
    random = Counter(key(r) for r in rows if r["fixation_source"] == "random")
    assert viewer == random and sum(viewer.values()) == 30
    fixations = {(r["fixation_source"], r["scanpath_id"], r["prefix"]): r["fixations"] for r in rows}
    for (source, sid, prefix), xy in fixations.items():
        if source == "random":
            assert xy != fixations[("viewer", sid, prefix)]
            if prefix == 2:  # prefixes of one random list, like the viewer's
                assert xy[:1] == fixations[("random", sid, 1)]


def test_same_seed_same_bytes_and_a_subset_reproduces(study, pipe, tmp_path):
    # The same plan rendered again, in another batch composition, into another folder.
    subset = [j for j in study["jobs"] if j.scene_id == "B.png" and j.condition == "foveal"]
    summary = run_study(pipe, subset, tmp_path, batch_size=3, progress=False)
    assert summary.generated == len(subset) == 8
    for job in subset:
        assert (tmp_path / job.path).read_bytes() == (study["root"] / "out" / job.path).read_bytes()
    # A smaller plan (fewer hypotheses, one prefix) yields the same ids and seeds for what it shares.
    smaller = plan_study(
        study["scenes"],
        StudySettings(**{**SETTINGS.__dict__, "hypotheses": 1, "prefixes": (2,)}),
        model="tiny-random",
        pipe=pipe,
        report=Counter(),
    )
    full = {j.image_id: j.seed for j in study["jobs"]}
    assert smaller and all(full[j.image_id] == j.seed for j in smaller)


def test_changed_settings_change_the_ids(study, pipe):
    ids = {j.image_id for j in study["jobs"]}
    for change in ({"guidance_scale": 0.5}, {"seed": 8}, {"steps": 2}, {"peripheral_blur": 0.5}):
        other = plan_study(
            study["scenes"],
            StudySettings(**{**SETTINGS.__dict__, **change}),
            model="tiny-random",
            pipe=pipe,
            report=Counter(),
        )
        assert not ids & {j.image_id for j in other}, change
    other = plan_study(study["scenes"], SETTINGS, model="another-model", pipe=pipe, report=Counter())
    assert not ids & {j.image_id for j in other}

    # λ_p does not touch the images whose peripheral stream is off (their λ_p is 0 either way): same
    # ids, nothing to redo. A dropped peripheral stream (the default "foveal") still runs at λ_p.
    def plan(**change):
        settings = StudySettings(**{**SETTINGS.__dict__, "conditions": ("both", "foveal", "foveal:off"), **change})
        return plan_study(study["scenes"], settings, model="tiny-random", pipe=pipe, report=Counter())

    before, after = plan(), plan(peripheral_scale=0.5)
    shared = {j.image_id for j in before} & {j.image_id for j in after}
    assert shared == {j.image_id for j in before if j.condition == "foveal:off"} != set()


# --------------------------------------------------------------------------- resume


def test_a_study_that_fails_before_its_first_image_leaves_no_folder(study, pipe, tmp_path):
    """Before: images/ was made up front, so a run failing at its first render left an empty folder."""
    jobs = [j for j in study["jobs"] if j.scene_id == "A.png"][:2]
    out = tmp_path / "never"
    with pytest.raises(KeyboardInterrupt):
        run_study(CountingPipe(pipe, fail_at_call=0), jobs, out, batch_size=2, progress=False)
    assert not out.exists()
    (tmp_path / "given").mkdir()  # a folder the user made is kept, and holds nothing
    with pytest.raises(KeyboardInterrupt):
        run_study(CountingPipe(pipe, fail_at_call=0), jobs, tmp_path / "given", batch_size=2, progress=False)
    assert list((tmp_path / "given").iterdir()) == []
    assert run_study(pipe, jobs, out, batch_size=2, progress=False).generated == 2  # and the rerun just runs


def test_resume_after_interruption_and_deleted_files(study, pipe, tmp_path):
    jobs = [
        j for j in study["jobs"] if j.scene_id == "A.png" and j.condition == "both" and j.fixation_source == "viewer"
    ]
    assert len(jobs) == 6
    with pytest.raises(KeyboardInterrupt):
        run_study(CountingPipe(pipe, fail_at_call=2), jobs, tmp_path, batch_size=2, progress=False)
    assert len(read_manifest(tmp_path / MANIFEST_NAME)) == 4  # two finished batches, complete lines
    first = read_manifest(tmp_path / MANIFEST_NAME)
    (tmp_path / first[0]["path"]).unlink()  # a deleted image is redone
    with open(tmp_path / MANIFEST_NAME, "a") as f:
        f.write('{"image_id": "half-writ')  # a torn last line is ignored, then removed

    counting = CountingPipe(pipe)
    with pytest.warns(UserWarning, match="no image file"):
        summary = run_study(counting, jobs, tmp_path, batch_size=2, progress=False)
    assert summary.generated == 3 and summary.already_done == 3
    assert sum(len(c["generator"]) for c in counting.calls) == 3
    rows = read_manifest(tmp_path / MANIFEST_NAME)
    assert sorted(r["image_id"] for r in rows) == sorted(j.image_id for j in jobs)
    assert [r["image_id"] for r in rows] == [j.image_id for j in jobs]  # merged into plan order
    for job in jobs:  # resumed images equal uninterrupted ones (batches differ, so allow a rounding flip)
        resumed = np.asarray(Image.open(tmp_path / job.path), dtype=np.int16)
        original = np.asarray(Image.open(study["root"] / "out" / job.path), dtype=np.int16)
        assert np.abs(resumed - original).max() <= 1
    # nothing left to do: no encode, no call
    again = CountingPipe(pipe)
    assert run_study(again, jobs, tmp_path, progress=False).generated == 0
    assert again.encodes == [] and again.calls == []


# --------------------------------------------------------------------------- command line


def test_cli_single_image_reproducible_and_resumable(tmp_path, capsys):
    scene = write_scene(tmp_path / "scene.png", 48, 32, 3)
    (tmp_path / "fix.json").write_text("[[10, 10], [30.5, 20], [47, 31]]")
    args = [
        "--tiny",
        "--image",
        str(scene),
        "--fixations",
        str(tmp_path / "fix.json"),
        "--prefixes",
        "1,3,5,all",
        "--hypotheses",
        "2",
        "--steps",
        "1",
        "--no-progress",
        "--seed",
        "3",
    ]
    assert generate_main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "RANDOMLY INITIALISED" in err and "Skipped 1" in err  # prefix 5 > 3 fixations
    generate_main([*args, "--out", str(tmp_path / "b")])
    rows = read_manifest(tmp_path / "a" / MANIFEST_NAME)
    assert len(rows) == 6 and {r["prefix"] for r in rows} == {1, 3, None}
    assert {r["scanpath_id"] for r in rows} == {"fix"} and rows[0]["scene_id"] == "scene.png"
    assert (rows[0]["height"], rows[0]["width"]) == output_size(48, 32, 32, 2)  # tiny: 16-latent x VAE factor 2
    for row in rows:
        assert (tmp_path / "a" / row["path"]).read_bytes() == (tmp_path / "b" / row["path"]).read_bytes()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "images").iterdir()}
    generate_main([*args, "--out", str(tmp_path / "a")])
    assert "0 image(s), 6 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "images").iterdir()} == before


def test_empty_fixation_list_is_valid(tmp_path):
    scene = write_scene(tmp_path / "scene.png", 40, 40, 4)
    (tmp_path / "none.json").write_text("[]")
    generate_main(
        [
            "--tiny",
            "--image",
            str(scene),
            "--fixations",
            str(tmp_path / "none.json"),
            "--steps",
            "1",
            "--conditions",
            "both,peripheral",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    rows = read_manifest(tmp_path / "o" / MANIFEST_NAME)
    assert [(r["n_fixations"], r["fixations"], r["prefix"]) for r in rows] == [(0, [], None)] * 2


def _nothing_written(out: Path) -> bool:
    return not out.exists()


def test_bad_inputs_fail_clearly_before_writing(tmp_path):
    root = tmp_path / "data"
    jsonl = write_dataset(root)
    out = tmp_path / "out"
    base = ["--tiny", "--out", str(out), "--steps", "1"]

    with pytest.raises(SystemExit, match="no image at"):
        generate_main([*base, "--image", str(tmp_path / "missing.png"), "--fixations", str(jsonl)])
    assert _nothing_written(out)

    lines = jsonl.read_text().splitlines()
    bad = root / "fix" / "unknown.jsonl"
    bad.write_text("\n".join([lines[0], lines[1].replace('"A.png"', '"nowhere.png"')]) + "\n")
    with pytest.raises(SystemExit, match=r"line 2: scanpath 'b' refers to image 'nowhere.png'"):
        generate_main([*base, "--scanpaths", str(bad)])
    assert _nothing_written(out)

    bad.write_text("\n".join([lines[0], lines[1], '{"id": "x", "width": 48,', lines[2]]) + "\n")
    with pytest.raises(SystemExit, match=r"unknown.jsonl, line 3"):
        generate_main([*base, "--scanpaths", str(bad)])
    assert _nothing_written(out)

    bad.write_text(lines[0].replace('"width": 48', '"width": 96') + "\n")
    with pytest.raises(SystemExit, match="never rescales"):
        generate_main([*base, "--scanpaths", str(bad)])
    assert _nothing_written(out)

    (tmp_path / "fix.json").write_text("[[1, 2],\n [3]]")
    with pytest.raises(SystemExit, match=r"\[x, y\] pairs"):
        generate_main([*base, "--image", str(root / "images" / "A.png"), "--fixations", str(tmp_path / "fix.json")])
    (tmp_path / "fix.json").write_text("[[1, 2],\n [3, ]]")
    with pytest.raises(SystemExit, match=r"fix.json, line 2"):
        generate_main([*base, "--image", str(root / "images" / "A.png"), "--fixations", str(tmp_path / "fix.json")])
    assert _nothing_written(out)

    # off-image policy "error": the offending scanpath is reported, nothing written
    with pytest.raises(SystemExit, match=r"line 3: .*off the image"):
        generate_main([*base, "--scanpaths", str(jsonl), "--off-image", "error"])
    assert _nothing_written(out)

    for extra, message in (
        (["--conditions", "both,fovea"], "conditions"),
        (["--prefixes", "1,x"], "--prefixes"),
        (["--hypotheses", "0"], "hypotheses"),
    ):
        with pytest.raises(SystemExit, match=message):
            generate_main([*base, "--scanpaths", str(jsonl), *extra])
    with pytest.raises(SystemExit, match="--model"):
        generate_main(["--out", str(out), "--scanpaths", str(jsonl)])
    with pytest.raises(SystemExit, match="one of them"):
        generate_main([*base])
    assert _nothing_written(out)


def test_off_image_clip_policy_and_fixation_list_loader(tmp_path):
    scene = write_scene(tmp_path / "s.png", 48, 32, 5)
    with pytest.warns(UserWarning, match="clipped to the image border 1 of 2"):
        (loaded,) = load_fixation_list_scene(scene, [[10, 10], [60, 5]], off_image="clip")
    xy = loaded.lists[0][1].xy
    assert xy[1, 0] < 48 and xy[1, 0] == pytest.approx(48) and xy[1, 1] == 5
    # prefix 0 is allowed (no fixations: peripheral only); the whole list is prefix None
    jobs = plan_study([loaded], StudySettings(prefixes=(0, None), steps=1), model="m", native_size=32, size_multiple=2)
    assert [j.n_fixations for j in jobs] == [0, 2]
    assert (jobs[0].height, jobs[0].width) == output_size(48, 32, 32, 2) == (26, 40)
    with pytest.raises(ValueError, match="output size"):
        plan_study([loaded], StudySettings(), model="m")


def test_paired_noise_shares_one_seed_per_list_and_hypothesis_across_conditions_sources_and_prefixes(study):
    """Common random numbers (the default): conditions, fixation sources and prefixes of one list and
    hypothesis start from the same noise; hypotheses and lists differ. Independent noise: all differ."""
    from collections import defaultdict

    seeds = defaultdict(set)
    for r in study["rows"]:
        assert r["noise"] == "paired"
        seeds[(r["scene_id"], r["scanpath_id"], r["hypothesis"])].add(r["seed"])
    assert all(len(s) == 1 for s in seeds.values())
    assert len({next(iter(s)) for s in seeds.values()}) == len(seeds)  # different lists / hypotheses differ
    independent = plan_study(
        study["scenes"], replace(SETTINGS, noise="independent"), model="tiny-random", report=Counter()
    )
    assert len({j.seed for j in independent}) == len(independent)
    paired_ids = {r["image_id"] for r in study["rows"]}
    assert not paired_ids & {j.image_id for j in independent}  # the noise mode is part of every image_id
    with pytest.raises(ValueError, match="noise must be one of"):
        replace(SETTINGS, noise="shared")


# --------------------------------------------------------------------------- resume: what is not trusted


def _small_jobs(pipe, root: Path, scenes: int = 1, **settings):
    """A quick plan (16x16, one step): one list per scene, scene k at root/scene<k>.png."""
    loaded = []
    for k in range(scenes):
        scene = write_scene(root / f"scene{k}.png", 48, 32, 10 + k)
        loaded += load_fixation_list_scene(scene, [[10, 10], [30.5, 20], [47, 31]][: 3 - k])
    config = dict(prefixes=(None,), hypotheses=2, steps=1, height=16, width=16) | settings
    return plan_study(loaded, StudySettings(**config), model="tiny-random", pipe=pipe)


def _records(jobs) -> list[dict]:
    """The rows the plan writes, as they read back from JSON."""
    import json

    return [json.loads(json.dumps(j.record())) for j in jobs]


def _write_rows(path: Path, rows: list[dict]) -> None:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _max_diff(a: Path, b: Path) -> int:
    return int(np.abs(np.asarray(Image.open(a), dtype=np.int16) - np.asarray(Image.open(b), dtype=np.int16)).max())


def test_resume_rerenders_every_row_it_cannot_trust_and_says_why(pipe, tmp_path):
    import shutil

    from metamergen.study.run import StudyResumeWarning

    jobs = _small_jobs(pipe, tmp_path, prefixes=(1, 2, 3, None))
    assert len(jobs) == 8
    out = tmp_path / "out"
    run_study(pipe, jobs, out, batch_size=4, progress=False)
    shutil.copytree(out / "images", tmp_path / "original")
    rows = read_manifest(out / MANIFEST_NAME)
    png = [out / r["path"] for r in rows]
    png[0].write_bytes(png[0].read_bytes()[: png[0].stat().st_size // 2])  # truncated by a full disk
    png[1].write_bytes(b"not a png")
    png[2].unlink()
    Image.new("RGB", (8, 8)).save(png[3])  # decodes, but is not what the row says
    rows[4]["fixations"][0][0] += 1.0  # hand-edited rows: inputs other than the plan's for that image_id
    rows[5]["seed"] += 1
    rows[6]["scene"] = str(tmp_path / "elsewhere.png")
    _write_rows(out / MANIFEST_NAME, [*rows, rows[7]])  # row 7 also listed twice: kept once

    counting = CountingPipe(pipe)
    with pytest.warns(StudyResumeWarning) as caught:
        summary = run_study(counting, jobs, out, batch_size=4, progress=False)
    (line,) = [str(w.message) for w in caught]
    assert "7 manifest row(s) not trusted" in line
    for reason in (
        "image file unreadable or truncated: 2",
        "no image file: 1",
        "image size differs from the row's: 1",
        "recorded fixations differs from the plan: 1",
        "recorded seed differs from the plan: 1",
        "recorded scene differs from the plan: 1",
    ):
        assert reason in line, line
    assert (summary.generated, summary.already_done) == (7, 1)
    assert sum(len(c["generator"]) for c in counting.calls) == 7
    assert read_manifest(out / MANIFEST_NAME) == _records(jobs)  # stale rows replaced, none twice, plan order
    for job in jobs:  # the re-rendered images are the original ones (batches differ: a rounding flip at most)
        assert _max_diff(out / job.path, tmp_path / "original" / Path(job.path).name) <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now everything is trusted: no warning, no encode, no call
        again = CountingPipe(pipe)
        assert run_study(again, jobs, out, progress=False).generated == 0
    assert again.encodes == [] and again.calls == []
    # a row whose image_id is no string is not guessed at: the line is named
    (out / MANIFEST_NAME).write_text('{"image_id": 3, "path": "images/x.png"}\n' + (out / MANIFEST_NAME).read_text())
    with pytest.raises(ValueError, match=r"manifest.jsonl, line 1: not a manifest row .*both strings"):
        run_study(pipe, jobs, out, progress=False)


def test_resume_with_several_processes_checks_and_rewrites_only_each_process_share(pipe, tmp_path):
    """Two ranks resume a damaged one-process folder (run one after the other, as accelerate would
    run them at once): each re-renders only its own scene's untrusted rows, writes only its own part
    and removes only its own leftover temporaries; the merge drops the stale rows left elsewhere."""
    import shutil

    from metamergen.study.manifest import merge_manifest, part_name
    from metamergen.study.run import StudyResumeWarning

    jobs = _small_jobs(pipe, tmp_path, scenes=2)  # scene0 -> rank 0, scene1 -> rank 1
    whole, shared = tmp_path / "whole", tmp_path / "shared"
    run_study(pipe, jobs, whole, batch_size=2, progress=False)
    shutil.copytree(whole, shared)
    rows = read_manifest(shared / MANIFEST_NAME)
    assert [r["scene_id"] for r in rows] == ["scene0.png", "scene0.png", "scene1.png", "scene1.png"]
    rows[0]["seed"] += 1  # rank 0's: a stale row
    _write_rows(shared / MANIFEST_NAME, rows)
    (shared / rows[3]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n")  # rank 1's: a truncated image
    temporaries = {
        0: [shared / "images" / f".{jobs[0].image_id}.png.aaaaaaaa.tmp", shared / ".manifest.jsonl.cccccccc.tmp"],
        1: [shared / "images" / f".{jobs[2].image_id}.png.bbbbbbbb.tmp", shared / f".{part_name(1)}.dddddddd.tmp"],
    }
    for path in temporaries[0] + temporaries[1]:
        path.write_bytes(b"half")
    manifest = (shared / MANIFEST_NAME).read_bytes()

    def rank(r: int) -> list[str]:
        with pytest.warns(StudyResumeWarning) as caught:
            summary = run_study(pipe, jobs, shared, batch_size=2, progress=False, process_index=r, num_processes=2)
        assert (summary.generated, summary.already_done, summary.temporaries_removed) == (1, 1, 2)
        return [str(w.message) for w in caught]

    removed, untrusted = rank(1)
    assert "process 1 of 2" in untrusted and "image file unreadable or truncated: 1" in untrusted
    assert "removed 2 leftover temporary" in removed
    assert not any(p.exists() for p in temporaries[1]) and all(p.exists() for p in temporaries[0])
    part1 = (shared / part_name(1)).read_bytes()
    removed, untrusted = rank(0)
    assert "process 0 of 2" in untrusted and "recorded seed differs from the plan: 1" in untrusted
    assert not any(p.exists() for p in temporaries[0])
    # neither rank rewrote a file another rank may be appending to
    assert (shared / MANIFEST_NAME).read_bytes() == manifest and (shared / part_name(1)).read_bytes() == part1

    merge_manifest(shared, [j.image_id for j in jobs], expected={j.image_id: j.record() for j in jobs})
    assert (shared / MANIFEST_NAME).read_bytes() == (whole / MANIFEST_NAME).read_bytes()
    assert sorted(p.name for p in shared.iterdir()) == ["images", MANIFEST_NAME]
    for job in jobs:
        assert _max_diff(shared / job.path, whole / job.path) <= 1


def test_generate_removes_only_its_own_leftover_temporaries(tmp_path):
    from metamergen.study.run import StudyResumeWarning

    scene = write_scene(tmp_path / "scene.png", 48, 32, 3)
    (tmp_path / "fix.json").write_text("[[10, 10]]")
    out = tmp_path / "out"
    args = ["--tiny", "--image", str(scene), "--fixations", str(tmp_path / "fix.json"), "--steps", "1"]
    args += ["--height", "16", "--width", "16", "--no-progress", "--out", str(out)]
    assert generate_main(args) == 0
    (image,) = (out / "images").iterdir()
    leftovers = [out / "images" / f".{image.name}.k3j_9a0b.tmp", out / ".manifest.jsonl.x1y2z3w4.tmp"]
    others = [  # not atomic_write's pattern (or not a file): never removed
        out / "images" / f".{image.name}.tmp",
        out / "images" / f".{image.name}.abc.tmp",
        out / "images" / f".{image.name}.ABCDEFGH.tmp",
        out / "notes.tmp",
        out / ".keep",
    ]
    for path in leftovers + others:
        path.write_bytes(b"x")
    folder = out / ".other.png.abcdefgh.tmp"
    folder.mkdir()
    with pytest.warns(StudyResumeWarning, match=r"removed 2 leftover temporary file"):
        assert generate_main(args) == 0
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in others) and folder.is_dir()


def test_generate_with_nothing_to_render_is_an_error_and_writes_nothing(tmp_path, capsys):
    from metamergen.commands import main

    out = tmp_path / "out"
    base = ["generate", "--tiny", "--steps", "1", "--no-progress", "--out", str(out)]
    for text in ("", "\n\n"):
        (tmp_path / "empty.jsonl").write_text(text)
        assert main([*base, "--scanpaths", str(tmp_path / "empty.jsonl")]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert err.startswith("metamergen generate: error:") and "holds no scanpaths" in err, err
        assert not out.exists()

    scene = write_scene(tmp_path / "scene.png", 48, 32, 3)
    (tmp_path / "fix.json").write_text("[[10, 10]]")
    assert main([*base, "--image", str(scene), "--fixations", str(tmp_path / "fix.json"), "--prefixes", "2,3"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "nothing to render" in err and "longest has 1 fixation" in err and "'all'" in err, err
    assert not out.exists()

    (loaded,) = load_fixation_list_scene(scene, [[10, 10]])
    with pytest.raises(ValueError, match=r"nothing to render: all 2 .* skipped"):
        plan_study([loaded], StudySettings(prefixes=(2, 3)), model="m", native_size=32, size_multiple=2)
    with pytest.raises(ValueError, match="no scenes"):
        plan_study([], StudySettings(), model="m", native_size=32, size_multiple=2)
