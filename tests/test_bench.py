"""Smoke test of bench/: every benchmark runs in --tiny mode for one repeat and writes its JSON.

No timing assertions: only that each script runs, that its JSON holds the expected keys with
positive times, and the few non-timing facts the benchmarks report (encoder pass counts, batch
independence of per-image seeds). The benchmarks run in this process through ``bench/run_all.py``
(each script's ``main(argv)``), which also writes the combined README table.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
NAMES = (
    "unet_step",
    "encoding",
    "batched",
    "study_throughput",
    "serve",
    "model_metamers",
    "train_step",
    "data_loading",
)
KEYS = {"benchmark", "machine", "settings", "raw_seconds", "median_seconds", "ratios", "table"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"metamergen_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run_all = _load("run_all")
    summary = run_all.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--in-process",
            "--results",
            str(out),
            "--extra",
            "data_loading:--workers 1",
            "--extra",
            "serve:--steps 2 --clients 2 --requests-per-client 1",
        ]
    )
    return out, summary


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_runs_and_writes_its_json(results, name):
    out, summary = results
    assert summary["status"][name] == "ok", summary["status"][name]
    data = json.loads((out / f"{name}.json").read_text())
    assert KEYS <= set(data), KEYS - set(data)
    assert data["benchmark"] == name
    assert data["settings"]["tiny"] is True and data["settings"]["repeats"] == 1
    for key in ("torch", "cpu_count", "device_name"):
        assert data["machine"][key]
    for section in ("raw_seconds", "median_seconds"):
        values = list(_leaves(data[section]))
        assert values and all(isinstance(v, float) and v > 0 for v in values), (section, values)
    ratios = list(_leaves(data["ratios"]))
    assert ratios and all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)
    table = data["table"]
    assert table["rows"] and all(len(r) == len(table["headers"]) for r in table["rows"])


def test_encoder_passes_are_counted(results):
    out, _ = results
    data = json.loads((out / "encoding.json").read_text())
    for key, passes in data["encoder_passes"].items():
        k = int(key.split("=")[1])
        assert passes == {"cached": 2, "naive": 2 * k}


def test_per_image_seeds_make_batches_independent(results):
    out, _ = results
    data = json.loads((out / "batched.json").read_text())
    assert max(data["max_abs_diff_vs_first"].values()) < 1e-3


def test_two_study_processes_render_what_one_does(results):
    out, _ = results
    data = json.loads((out / "study_throughput.json").read_text())
    assert set(data["median_seconds"]["all"]) == {"1proc_b1", "1proc_b4", "2proc_b4", "2proc_b4_render"}
    assert all(data["same_image_ids"].values()) and all(data["manifest_identical"].values())
    same_batch = data["two_processes_vs_one_at_same_batch"]
    assert same_batch["same_image_ids"] and same_batch["manifest_identical"] and same_batch["images"] > 0
    assert max(data["max_abs_diff_vs_first"].values()) < 2e-2  # a few 8-bit levels at most (batched numerics)


def test_targets_and_memory_are_reported(results):
    out, _ = results
    unet = json.loads((out / "unet_step.json").read_text())
    assert set(unet["median_seconds"]) == {"B=1", "B=8"}
    assert set(unet["median_seconds"]["B=1"]) == {
        "plain",
        "metamergen",
        "metamergen_resample_each_step",
        "ip_adapter_plus",
    }
    assert all(t["verdict"].startswith("n/a") for t in unet["targets"].values())  # tiny: not the 512-px target
    train = json.loads((out / "train_step.json").read_text())
    assert set(train["samples_per_second"]) == {"online", "cache", "online+ckpt", "cache+ckpt"}
    assert set(train["peak_memory_bytes"]) == set(train["samples_per_second"]) and train["memory_method"]
    loading = json.loads((out / "data_loading.json").read_text())
    assert set(loading["loader_samples_per_second"]) == {"workers=0", "workers=1"}
    assert set(loading["train_samples_per_second"]) == {"online", "cache"}
    assert "read from" in loading["settings"]["train_source"]


def test_combined_table_is_written(results):
    out, summary = results
    text = (out / "README-table.md").read_text()
    assert summary["table"] == str(out / "README-table.md")
    assert text.count("\n### ") == len(NAMES)
    assert "Measured on:" in text and "--tiny" in text
