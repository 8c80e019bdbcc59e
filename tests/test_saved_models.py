"""Saved pipeline folders keep loading and rendering the same, whatever the package's file layout.

``tests/data/saved_release_0_1_0`` was saved by release 0.1.0.dev0, before the package was
reorganised into sub-packages (``tests/data/make_saved_release.py`` says how), together with what it
renders, and what the bundled demo model renders (both re-recorded once, with one thread, when the
CFG++ last step was corrected to return the clean estimate, and the demo's when its model was
rebuilt; other thread counts change float reduction order, hence the 1e-5 tolerance on [0, 1]
pixels, far below one 8-bit level). A folder records the adapters' module
(``model_index.json``) and imports the pipeline class in its ``pipeline.py`` shim; both name the
public packages ``metamergen.adapters`` and ``metamergen.pipeline``, which new saves must keep.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metamergen.pipeline import MetamerGenPipeline

DATA = Path(__file__).parent / "data"
OLD_FOLDER = DATA / "saved_release_0_1_0"
SCENE = DATA / "saved_release_scene.png"
FIXATIONS = [[[10.0, 12.0], [40.0, 20.0]]]


def _render(pipe: MetamerGenPipeline, steps: int, seed: int, n: int) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        image=Image.open(SCENE),
        fixations=FIXATIONS,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        num_images_per_prompt=n,
    )
    return out.images


def test_a_folder_saved_by_the_previous_layout_renders_exactly_as_it_did(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(OLD_FOLDER, folder)  # loading must not need to write next to the test data
    pipe = MetamerGenPipeline.from_pretrained(folder)
    expected = np.load(DATA / "saved_release_expected.npy")
    np.testing.assert_allclose(_render(pipe, steps=3, seed=7, n=2), expected, rtol=0, atol=1e-5)


def test_the_bundled_demo_model_renders_exactly_as_recorded():
    from metamergen.demo.run import DEMO_MODEL

    pipe = MetamerGenPipeline.from_pretrained(DEMO_MODEL)
    expected = np.load(DATA / "demo_model_expected.npy")
    np.testing.assert_allclose(_render(pipe, steps=4, seed=3, n=1), expected, rtol=0, atol=1e-5)


def test_new_saves_record_the_public_package_paths_and_load_through_plain_diffusers(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = MetamerGenPipeline.from_pretrained(OLD_FOLDER)
    pipe.save_pretrained(tmp_path / "new")
    index = json.loads((tmp_path / "new" / "model_index.json").read_text())
    assert index["adapters"] == ["metamergen.adapters", "MetamerGenAdapters"]
    assert index["_class_name"] == "MetamerGenPipeline"
    shim = (tmp_path / "new" / "pipeline.py").read_text()
    assert "from metamergen.pipeline import MetamerGenPipeline" in shim
    # the new folder matches the old one file for file (no file depends on where the code sits)
    old_files = sorted(p.relative_to(OLD_FOLDER).as_posix() for p in OLD_FOLDER.rglob("*") if p.is_file())
    new_files = sorted(p.relative_to(tmp_path / "new").as_posix() for p in (tmp_path / "new").rglob("*") if p.is_file())
    assert new_files == old_files
    via_diffusers = DiffusionPipeline.from_pretrained(
        tmp_path / "new", custom_pipeline=str(tmp_path / "new"), trust_remote_code=True
    )
    assert type(via_diffusers).__name__ == "MetamerGenPipeline"
    np.testing.assert_allclose(
        _render(via_diffusers, steps=3, seed=7, n=2), np.load(DATA / "saved_release_expected.npy"), rtol=0, atol=1e-5
    )


def test_loading_with_a_dtype_prints_no_deprecation_warning(tmp_path, monkeypatch):
    """Before: every load through `--model` printed diffusers' FutureWarning "`torch_dtype` is deprecated"."""
    import importlib.metadata
    import logging
    import warnings

    from metamergen.loading import load_model
    from metamergen.testing import tiny_pipeline
    from metamergen.utils import dtypes

    folder = tmp_path / "tiny"
    tiny_pipeline(seed=0).save_pretrained(folder)
    logged: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    handler = Collect()
    logging.getLogger("transformers").addHandler(handler)
    if hasattr(logging.Logger, "warning_once"):  # transformers says each warning once per process
        logging.Logger.warning_once.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_model(model=str(folder), dtype="float32")
            load_model(
                adapters=str(folder / "adapters"), base_model=str(folder), image_encoder=str(folder / "image_encoder")
            )
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    messages = logged + [str(w.message) for w in caught]
    assert not [m for m in messages if "torch_dtype" in m], messages

    # the oldest diffusers and transformers pyproject.toml allows know only `torch_dtype`
    real = importlib.metadata.version
    oldest = {"diffusers": "0.32.0", "transformers": "4.48.0"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: oldest.get(name) or real(name))
    dtypes._takes_dtype.cache_clear()
    try:
        assert dtypes.dtype_kwargs(torch.float16) == {"torch_dtype": torch.float16}
        assert dtypes.dtype_kwargs(torch.float16, "transformers") == {"torch_dtype": torch.float16}
        assert dtypes.dtype_kwargs(None) == {}
    finally:
        dtypes._takes_dtype.cache_clear()
