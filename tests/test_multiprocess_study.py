"""``generate`` and ``score`` under ``accelerate launch``: two CPU processes give the same images,
manifest and score table, byte for byte, as one process, and resume across process counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metamergen.commands import main
from metamergen.fixations.io import DatasetInfo, write_scanpaths
from metamergen.fixations.records import Scanpath

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_CONFIG = ROOT / "training" / "accelerate" / "cpu_2proc.yaml"
GENERATE = ["--tiny", "--steps", "2", "--conditions", "both,peripheral", "--height", "16", "--width", "16"]
GENERATE += ["--no-progress", "--batch-size", "3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three scenes (so two processes get unequal shares), two lists of three fixations each."""
    root = tmp_path_factory.mktemp("mp")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    paths = []
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(root / "images" / f"s{k}.png")
        for j in range(2):
            xy = rng.uniform(0, 30, (3, 2))
            paths.append(Scanpath.from_points(xy, width=48, height=32, image=f"s{k}.png", id=f"s{k}-{j}", subject="a"))
    return write_scanpaths(root / "scan.jsonl", paths, DatasetInfo(image_root="images"))


def _launch(*argv: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIG), "-m", "metamergen"]
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _same_folder(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_two_processes_generate_and_score_exactly_what_one_does(dataset: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["generate", "--scanpaths", str(dataset), "--out", str(one), "--prefixes", "1,2", *GENERATE]) == 0
    _launch("generate", "--scanpaths", str(dataset), "--out", str(two), "--prefixes", "1,2", *GENERATE)
    assert not list(two.glob("manifest.part-*"))  # folded into manifest.jsonl
    _same_folder(one / "images", two / "images")
    assert (one / "manifest.jsonl").read_bytes() == (two / "manifest.jsonl").read_bytes()

    score = ["--metrics", "mse,ssim", "--no-progress"]
    assert main(["score", "--manifest", str(one / "manifest.jsonl"), *score]) == 0
    _launch("score", "--manifest", str(two / "manifest.jsonl"), *score)
    assert (one / "scores.csv").read_bytes() == (two / "scores.csv").read_bytes()
    assert (one / "baselines.csv").read_bytes() == (two / "baselines.csv").read_bytes()


@pytest.mark.slow
def test_a_study_resumes_across_process_counts(dataset: Path, tmp_path: Path):
    """Half a study by one process, the rest by two, equals the whole study by one."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["generate", "--scanpaths", str(dataset), "--out", str(whole), "--prefixes", "1,2", *GENERATE]) == 0
    assert main(["generate", "--scanpaths", str(dataset), "--out", str(resumed), "--prefixes", "1", *GENERATE]) == 0
    _launch("generate", "--scanpaths", str(dataset), "--out", str(resumed), "--prefixes", "1,2", *GENERATE)
    _same_folder(whole, resumed)


@pytest.mark.slow
def test_two_processes_resume_a_damaged_folder_and_say_so_once(dataset: Path, tmp_path: Path):
    """Untrusted rows of both processes' scenes are rendered again, leftover temporaries removed, and
    the main process reports each repair in one line for the whole study."""
    import json
    import shutil

    from metamergen.study.manifest import read_manifest

    whole, damaged = tmp_path / "whole", tmp_path / "damaged"
    assert main(["generate", "--scanpaths", str(dataset), "--out", str(whole), "--prefixes", "1", *GENERATE]) == 0
    shutil.copytree(whole, damaged)
    rows = read_manifest(damaged / "manifest.jsonl")
    first = {}  # the first row of each scene: s0 and s2 go to process 0, s1 to process 1
    for row in rows:
        first.setdefault(row["scene_id"], row)
    for scene in ("s0.png", "s1.png"):
        (damaged / first[scene]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n")  # truncated
    first["s2.png"]["seed"] += 1
    (damaged / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in (".manifest.part-001.jsonl.abcdefgh.tmp", "images/.x.png.12345678.tmp"):
        (damaged / name).write_bytes(b"half")
    err = _launch("generate", "--scanpaths", str(dataset), "--out", str(damaged), "--prefixes", "1", *GENERATE)
    (untrusted,) = [line for line in err.splitlines() if "not trusted" in line]
    assert untrusted.startswith("warning: ") and "3 manifest row(s) not trusted" in untrusted
    assert (
        "image file unreadable or truncated: 2" in untrusted and "recorded seed differs from the plan: 1" in untrusted
    )
    assert [line for line in err.splitlines() if "leftover temporary" in line] == [
        f"warning: {damaged}: removed 2 leftover temporary file(s) (.<name>.<8 characters>.tmp) of writes "
        "interrupted by a kill."
    ]
    assert (damaged / "manifest.jsonl").read_bytes() == (whole / "manifest.jsonl").read_bytes()
    assert sorted(p.name for p in damaged.rglob("*")) == sorted(p.name for p in whole.rglob("*"))
    for row in rows:
        a = np.asarray(Image.open(damaged / row["path"]), dtype=np.int16)
        assert np.abs(a - np.asarray(Image.open(whole / row["path"]), dtype=np.int16)).max() <= 1
