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


def _launch(*argv: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIG), "-m", "metamergen"]
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


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
