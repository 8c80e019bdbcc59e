"""The metamergen command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metamergen.commands import main

SCENE = Path(__file__).resolve().parents[1] / "metamergen" / "assets" / "example_scene.png"


def run_render(out: Path, *extra: str) -> None:
    main(
        [
            "render",
            "--tiny",
            "--image",
            str(SCENE),
            "--fixations",
            "135,150;235,255;600,10",
            "--out",
            str(out),
            "--steps",
            "2",
            "--num-images",
            "2",
            *extra,
        ]
    )


def test_module_help_lists_the_subcommands():
    done = subprocess.run([sys.executable, "-m", "metamergen", "--help"], capture_output=True, text=True, check=True)
    assert "render" in done.stdout


def test_render_writes_images_sheet_and_record_reproducibly(tmp_path: Path, capsys):
    with pytest.warns(UserWarning, match="1 of 3"):  # (600, 10) is off the 480x300 scene
        run_render(tmp_path / "a")
    assert "RANDOMLY INITIALISED" in capsys.readouterr().err
    record = json.loads((tmp_path / "a" / "render.json").read_text())
    assert record["fixations"] == [[135.0, 150.0], [235.0, 255.0]]
    assert record["seeds"] == [0, 1] and record["model"] == "tiny-random"
    assert record["guidance"] == "cfg++" and record["guidance_scale"] == 0.6  # the default it resolved to, not null
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["hypothesis_000_seed0.png", "hypothesis_001_seed1.png", "render.json", "sheet.png"]
    with pytest.warns(UserWarning):
        run_render(tmp_path / "b")
    for name in ("hypothesis_000_seed0.png", "hypothesis_001_seed1.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _error(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_render_errors_are_clear(tmp_path: Path, capsys):
    code, err = _error(capsys, ["render", "--tiny", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)])
    assert code == 2 and "no image at" in err and err.startswith("metamergen render: error")
    code, err = _error(capsys, ["render", "--image", str(SCENE), "--out", str(tmp_path)])
    assert code == 2 and "--model" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage errors keep argparse's exit code
        main(["render", "--no-such-flag"])
    assert exit_info.value.code == 2
    code, err = _error(
        capsys, ["render", "--tiny", "--image", str(SCENE), "--fixations", "1;2", "--out", str(tmp_path)]
    )
    assert code == 2 and "(x, y) pairs" in err
    code, err = _error(
        capsys, ["render", "--tiny", "--image", str(SCENE), "--fixations", "1,a", "--out", str(tmp_path)]
    )
    assert code == 2 and "x,y;x,y" in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_errors_interrupts_and_failures_have_one_line_and_an_exit_code(tmp_path: Path, capsys, monkeypatch):
    import metamergen.commands.render as render

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, err = _error(capsys, ["render", "--tiny", "--image", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and str(bad) in err and "Traceback" not in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "run", interrupted)
    code, err = _error(capsys, ["render", "--tiny", "--image", str(SCENE), "--out", str(tmp_path / "o")])
    assert code == 130 and "run the same command again to resume" in err

    def broken(args):
        raise RuntimeError("CUDA error: device-side assert\ntriggered")

    monkeypatch.setattr(render, "run", broken)
    code, err = _error(capsys, ["render", "--tiny", "--image", str(SCENE), "--out", str(tmp_path / "o")])
    assert code == 1 and err.endswith("(run with --debug for the traceback)") and "device-side assert triggered" in err
    with pytest.raises(RuntimeError):
        main(["--debug", "render", "--tiny", "--image", str(SCENE), "--out", str(tmp_path / "o")])
    monkeypatch.setenv("METAMERGEN_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["render", "--tiny", "--image", str(SCENE), "--out", str(tmp_path / "o")])


def test_study_chain_generate_score_report(tmp_path: Path, capsys):
    """The README's study walkthrough, end to end on the tiny model and a tiny offline CLIP."""
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(
        CLIPConfig(
            text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
            vision_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=8,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    fix = tmp_path / "f.json"
    fix.write_text("[[135, 150], [235, 255], [412, 250]]")
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--tiny",
                "--image",
                str(SCENE),
                "--fixations",
                str(fix),
                "--out",
                str(gen),
                "--prefixes",
                "1,3",
                "--conditions",
                "both,peripheral",
                "--random-control",
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    scores = tmp_path / "tables" / "scores.csv"
    assert (
        main(
            [
                "score",
                "--manifest",
                str(gen / "manifest.jsonl"),
                "--metrics",
                "psnr,ssim,clip",
                "--clip-model",
                str(tmp_path / "clip"),
                "--device",
                "cpu",
                "--out",
                str(scores),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["report", "--scores", str(scores), "--out", str(tmp_path / "report")]) == 0
    import csv

    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 2 * 2 * 2  # prefixes x conditions x (viewer, random)
    assert {r["condition"] for r in rows} == {"both", "peripheral"} and all(r["clip"] for r in rows)
    report = tmp_path / "report"
    assert (report / "index.html").is_file() and (report / "figures" / "psnr.png").is_file()
    assert len(list((report / "sheets").glob("*.png"))) == 4  # (condition x source) for the one scanpath


BAD_RENDER_INPUTS = [
    (["--steps", "0"], "--steps must be between 1 and 1000"),
    (["--steps", "1001"], "--steps must be between 1 and 1000"),
    (["--num-images", "0"], "--num-images must be >= 1"),
    (["--peripheral-blur", "0"], "--peripheral-blur is the down/up scale s in (0, 1]"),
    (["--foveal-scale", "nan"], "--foveal-scale must be a finite number >= 0"),
    (["--peripheral-scale", "-1"], "--peripheral-scale must be a finite number >= 0"),
    (["--guidance-scale", "7.5"], "for SD-style scales such as 7.5 pass --guidance cfg"),
    (["--fixations", "nan,5"], "NaN or infinite"),
    (["--fixations", "10,inf"], "NaN or infinite"),
    (["--fixations", "fixatons.json"], "no fixation file fixatons.json"),
    (["--off-image", "error", "--fixations", "10,10;5000,5"], "off the image"),
    (["--device", "cuda:7"], "--device cuda:7"),
]


@pytest.mark.parametrize("extra, message", BAD_RENDER_INPUTS, ids=[" ".join(a) for a, _ in BAD_RENDER_INPUTS])
def test_bad_render_inputs_get_one_line_and_exit_2(tmp_path: Path, capsys, extra: list[str], message: str):
    code, err = _error(capsys, ["render", "--tiny", "--image", str(SCENE), "--out", str(tmp_path / "o"), *extra])
    assert code == 2, err
    assert message in err and err.startswith("metamergen render: error"), err
    assert not (tmp_path / "o").exists()


def test_a_leading_minus_in_fixations_is_a_value_not_an_option(tmp_path: Path):
    from metamergen.commands import _attach_negative_values

    argv = ["render", "--fixations", "-10,5;20,30", "--out", "x"]
    assert _attach_negative_values(argv) == ["render", "--fixations=-10,5;20,30", "--out", "x"]
    assert _attach_negative_values(["--fixations", "--out"]) == ["--fixations", "--out"]


def test_a_missing_local_model_folder_is_named_not_looked_up_on_the_hub(tmp_path: Path, capsys):
    from metamergen.loading import looks_local

    assert looks_local("outputs/run/pipeline") and looks_local("./model") and looks_local("/data/sd")
    assert not looks_local("stable-diffusion-v1-5/stable-diffusion-v1-5")
    code, err = _error(
        capsys, ["render", "--model", "outputs/run/pipeline", "--image", str(SCENE), "--out", str(tmp_path)]
    )
    assert code == 2 and "--model outputs/run/pipeline: no such folder" in err, err


def test_generate_checks_output_size_before_writing(tmp_path: Path, capsys):
    fix = tmp_path / "fix.json"
    fix.write_text("[[10, 10]]")
    base = ["generate", "--tiny", "--image", str(SCENE), "--fixations", str(fix), "--out", str(tmp_path / "o")]
    code, err = _error(capsys, [*base, "--height", "31"])
    assert code == 2 and "together" in err
    code, err = _error(capsys, [*base, "--height", "31", "--width", "45"])
    assert code == 2 and "must be multiples of 2 (this model's VAE factor), e.g. 30 x 44" in err, err
    assert not (tmp_path / "o").exists()


def test_a_train_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(tmp_path: Path, capsys):
    """Before: a config.yaml was left in run.output_dir (here: the image folder holds no images)."""
    from accelerate.state import AcceleratorState

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    argv = ["train", "--config", str(config), f"data.images={tmp_path / 'empty'}", f"run.output_dir={run}"]
    try:
        assert main(argv) == 2
        assert "No images" in capsys.readouterr().err
        assert not run.exists()  # the run made the folder: it is removed
        run.mkdir()
        (run / "notes.txt").write_text("mine")
        AcceleratorState._reset_state(reset_partial_state=True)
        assert main(argv) == 2
        assert [p.name for p in run.iterdir()] == ["notes.txt"]  # only the run's own config.yaml went
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_an_unfinished_run_with_a_checkpoint_is_kept_for_resuming(tmp_path: Path):
    from metamergen.commands.train import remove_unfinished_run

    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text("run: {}")
    assert remove_unfinished_run(run, None) == [] and (run / "config.yaml").is_file()
    assert remove_unfinished_run(tmp_path / "absent", None) == []


def test_float16_on_the_cpu_is_said_once_in_one_line(tmp_path: Path, capfd):
    """Before: diffusers' "cannot run with `cpu` device" warning came five times, once per component."""
    import logging

    model = Path(__file__).resolve().parents[1] / "metamergen" / "assets" / "demo_model"
    argv = ["render", "--model", str(model), "--image", str(SCENE), "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main([*argv, "--num-images", "1", "--dtype", "float16", "--device", "cpu"]) == 0
    err = capfd.readouterr().err
    assert "cannot run with" not in err
    said = [line for line in err.splitlines() if "float16" in line]
    assert said == [
        "warning: --dtype float16 on the CPU: PyTorch runs float16 slowly there and some operations "
        "not at all; use --dtype float32 on the CPU, or --device cuda for float16."
    ]
    from metamergen.commands._common import _DropDiffusersHalfOnCpu

    filters = logging.getLogger("diffusers.pipelines.pipeline_utils").filters
    assert not any(isinstance(f, _DropDiffusersHalfOnCpu) for f in filters)  # the silencing ends with the load
    assert main([*argv, "--num-images", "1"]) == 0  # float32: nothing said
    assert "float16" not in capfd.readouterr().err
    # the demo model renders at the blur it was trained and measured at unless told otherwise
    assert json.loads((tmp_path / "r" / "render.json").read_text())["peripheral_blur"] == 0.125


def test_the_default_blur_is_the_paper_s_except_for_a_demo_model(tmp_path: Path):
    """Before: every command rendered the demo model at the paper's 1/4, outside its training blurs."""
    import argparse

    from metamergen.commands._common import check_sampling_arguments
    from metamergen.demo.run import DEMO_MODEL, default_peripheral_blur

    assert default_peripheral_blur(DEMO_MODEL) == 0.125
    assert default_peripheral_blur(None) == default_peripheral_blur("runwayml/stable-diffusion-v1-5") == 0.25
    (tmp_path / "build_info.json").write_text('{"steps": 3}')  # someone else's record: not a demo model
    assert default_peripheral_blur(tmp_path) == 0.25
    base = dict(steps=20, foveal_scale=1.2, peripheral_scale=0.7, guidance="cfg++", guidance_scale=None)
    for model, given, expected in ((str(DEMO_MODEL), None, 0.125), (None, None, 0.25), (str(DEMO_MODEL), 0.5, 0.5)):
        args = argparse.Namespace(**base, model=model, peripheral_blur=given)
        check_sampling_arguments(args)
        assert args.peripheral_blur == expected, (model, given)


def test_a_render_record_with_relative_paths_reproduces_from_any_folder(tmp_path: Path, monkeypatch, capsys):
    """Before: render.json held only the relative --image and --model given, useless from another folder."""
    import shutil

    work = tmp_path / "work"
    (work / "scenes").mkdir(parents=True)
    shutil.copy(SCENE, work / "scenes" / "scene.png")
    shutil.copytree(Path(__file__).resolve().parents[1] / "metamergen" / "assets" / "demo_model", work / "model")
    monkeypatch.chdir(work)
    argv = ["render", "--steps", "1", "--num-images", "1", "--fixations", "40,30"]
    assert main([*argv, "--model", "model", "--image", "scenes/scene.png", "--out", "a"]) == 0
    record = json.loads((work / "a" / "render.json").read_text())
    assert record["image"] == "scenes/scene.png" and record["image_path"] == str(work / "scenes" / "scene.png")
    assert record["model"] == "model" and record["model_path"] == str(work / "model")
    keys = list(record)
    assert keys[:5] == ["image", "image_path", "fixations", "model", "model_path"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the record alone, from another folder, renders the same image
    again = ["--model", record["model_path"], "--image", record["image_path"], "--out", str(elsewhere / "b")]
    assert main([*argv, *again]) == 0
    name = record["outputs"][0]
    assert (work / "a" / name).read_bytes() == (elsewhere / "b" / name).read_bytes()
    absolute = json.loads((elsewhere / "b" / "render.json").read_text())  # given absolute: no second copy
    assert "image_path" not in absolute and "model_path" not in absolute
    assert {k: v for k, v in record.items() if k not in ("image_path", "model_path", "image", "model")} == {
        k: v for k, v in absolute.items() if k not in ("image", "model")
    }
    capsys.readouterr()
