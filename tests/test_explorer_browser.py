"""The explorer page in a real browser: headless Chromium driven by Playwright, against the demo model.

A person's session, end to end: pick a toy scene, place fixations by clicking on it, drag one,
remove one with a right click, render, and see the hypothesis appear. The hypothesis the page shows
must be byte for byte the PNG that the same request made from Python returns, so the page sends
what it displays (fixations in the scene's pixels, the form's settings).

Playwright cannot download its own browser on this project's machines; the test uses the system's
Chromium (Debian's ``chromium`` package; ``METAMERGEN_CHROMIUM`` names another binary) and skips,
saying which is missing, when either is absent. ``.ci/run`` installs both.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import loopback

pytest.importorskip("fastapi", reason="the serve extra (pip install metamergen[serve]) is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; .ci/run installs it)"
)

expect = sync_api.expect
pytestmark = pytest.mark.slow

STEPS = 3


def _chromium() -> str:
    path = os.environ.get("METAMERGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium binary (apt-get install chromium, or set METAMERGEN_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The bundled demo model behind ``metamergen serve``'s app on a loopback port."""
    from metamergen.demo.run import DEMO_MODEL
    from metamergen.loading import load_model
    from metamergen.serve.app import create_app
    from metamergen.serve.config import RenderDefaults, ServeConfig

    loaded = load_model(model=str(DEMO_MODEL))
    loaded.pipe.set_progress_bar_config(disable=True)
    app = create_app(loaded.pipe, ServeConfig(model=loaded.description, defaults=RenderDefaults(steps=STEPS)))
    with loopback(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []  # console errors (a CSP refusal is one) and uncaught exceptions
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.goto(f"{server}/")
    page.wait_for_selector(".thumb img")
    page.problems = problems
    yield page
    context.close()


def _click_at(page: Any, fx: float, fy: float, **kw: Any) -> None:
    """Click the scene overlay at fractions ``(fx, fy)`` of its displayed width and height."""
    box = page.locator("#overlay").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"], **kw)


def test_clicked_fixations_render_the_hypothesis_python_gets_for_the_same_request(page, server):
    from metamergen.serve.client import MetamerGenClient

    page.click(".thumb >> nth=2")
    page.wait_for_selector("#stage:not(.empty)")
    scene = page.evaluate("state.scene")
    w, h = scene["width"], scene["height"]

    for fx, fy in [(0.25, 0.3), (0.5, 0.5), (0.8, 0.7)]:
        _click_at(page, fx, fy)
    assert page.locator("#fixation-list li").count() == 3
    # drag the third fixation, then remove the second with a right click on its marker
    box = page.locator("#overlay").bounding_box()
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.7 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.2 * box["height"], steps=5)
    page.mouse.up()
    _click_at(page, 0.5, 0.5, button="right")

    fixations = page.evaluate("state.fixations")
    assert len(fixations) == 2 and page.locator("#fixation-list li").count() == 2
    for (x, y), (fx, fy) in zip(fixations, [(0.25, 0.3), (0.6, 0.2)]):  # image pixels of the scene
        assert x == pytest.approx(fx * w, abs=0.02 * w) and y == pytest.approx(fy * h, abs=0.02 * h)
    markers = page.locator("#overlay .fixation text").all_text_contents()
    assert markers == ["1", "2"]  # renumbered in viewing order

    expect(page.locator("#model-view-caption")).to_contain_text("2 fixations")  # no eval: the page's CSP refuses it
    caption = page.text_content("#model-view-caption")
    assert "112 px canvas" in caption and "8 × 8 patches of 14 px" in caption

    page.fill("#seed", "4")
    page.fill("#hypotheses", "1")
    page.click("#render")
    page.wait_for_selector("figure.hypothesis img", timeout=120_000)
    assert page.text_content("#progress-text").startswith("done in")
    assert page.get_attribute("#progress-box", "data-steps-seen") == str(STEPS)  # a progress event per step
    assert page.locator("#scores tbody tr").count() >= 3

    shown = page.get_attribute("figure.hypothesis img", "src")
    assert shown.startswith("data:image/png;base64,")
    settings = page.evaluate("renderBody()")
    with MetamerGenClient(server) as client:
        direct = client.render(
            scene["scene_id"],
            fixations,
            seed=4,
            hypotheses=1,
            steps=STEPS,
            foveal_scale=settings["foveal_scale"],
            peripheral_scale=settings["peripheral_scale"],
            peripheral_blur=settings["peripheral_blur"],
            condition=settings["condition"],
        )
    assert base64.b64decode(shown.removeprefix("data:image/png;base64,")) == direct.png[0]
    assert page.problems == []


def test_settings_reach_the_model_view_and_bad_input_is_shown_not_thrown(page):
    page.click(".thumb >> nth=0")
    page.wait_for_selector("#stage:not(.empty)")
    _click_at(page, 0.5, 0.5)
    expect(page.locator("#model-view-caption")).to_contain_text("1 foveal patch ")
    page.select_option("#condition", "peripheral")
    expect(page.locator("#model-view-caption")).to_contain_text("periphery only")
    assert "0 foveal patches" in page.text_content("#model-view-caption")

    page.fill("#steps", "100000")  # over the server's limit: the form itself refuses it (max from /settings)
    page.click("#render")
    assert page.evaluate("document.getElementById('steps').validity.rangeOverflow")
    assert (
        page.get_attribute("#progress-box", "data-steps-seen") == "0" and page.text_content("#progress-text") == "idle"
    )
    page.evaluate("document.getElementById('steps').removeAttribute('max')")  # past the form: the server says why
    page.click("#render")
    expect(page.locator("#message")).to_have_class("message error")
    assert "steps" in page.text_content("#message")
    assert not page.is_disabled("#render")  # the page is usable again
    assert page.problems == [] or all("422" in p for p in page.problems)  # the browser logs the failed request


def test_the_explorer_figure_script_screenshots_three_hypotheses(tmp_path):
    """scripts/explorer_figure.py (remakes docs/figures/explorer.png) still drives the page to the end.
    In its own process: Playwright's sync API cannot start twice in one thread (the fixture's is running)."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    script = Path(__file__).resolve().parents[1] / "scripts" / "explorer_figure.py"
    out = tmp_path / "explorer.png"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--steps", "1", "--n", "3"],
        env={**os.environ, "METAMERGEN_CHROMIUM": _chromium(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(out).width == 1280
