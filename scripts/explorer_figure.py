"""Remake ``docs/figures/explorer.png``: the explorer page with the bundled demo model, in Chromium.

    .venv/bin/python scripts/explorer_figure.py                  # writes docs/figures/explorer.png
    .venv/bin/python scripts/explorer_figure.py --out /tmp/x.png --scene 2 --n 5

Serves the bundled model with ``metamergen serve``'s app on a loopback port, opens the page in
headless Chromium (Playwright, with the system's ``chromium``; ``METAMERGEN_CHROMIUM`` names another
binary), picks a toy scene, takes the toy viewer's fixations, renders three hypotheses at the demo's
periphery (s = 1/8, the blur ``metamergen demo`` uses) and saves a screenshot of the page. Needs the serve extra and ``playwright`` (``.ci/run`` installs both). About
half a minute on 2 CPU cores. Rerun it whenever the bundled model changes, so that the figure shows
that model's renders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "docs" / "figures" / "explorer.png"))
    p.add_argument("--scene", type=int, default=6, help="which toy scene thumbnail to pick (0-based)")
    p.add_argument("--n", type=int, default=10, help="first N of the toy viewer's fixations used")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from metamergen.demo.run import DEMO_MODEL, default_peripheral_blur
    from metamergen.loading import load_model
    from metamergen.serve.app import create_app, serve_in_thread
    from metamergen.serve.config import RenderDefaults, ServeConfig
    from metamergen.utils.io import atomic_write

    chromium = os.environ.get("METAMERGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("error: no Chromium binary (apt-get install chromium, or set METAMERGEN_CHROMIUM).")
    loaded = load_model(model=str(DEMO_MODEL))
    loaded.pipe.set_progress_bar_config(disable=True)
    app = create_app(
        loaded.pipe,
        ServeConfig(
            model=loaded.description,
            defaults=RenderDefaults(steps=args.steps, peripheral_blur=default_peripheral_blur(DEMO_MODEL)),
        ),
    )
    with serve_in_thread(app) as url:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1280, "height": 1240}).new_page()
            page.goto(f"{url}/")
            page.wait_for_selector(".thumb img")
            page.click(f".thumb >> nth={args.scene}")
            page.wait_for_selector("#stage:not(.empty)")
            page.click("#viewer-fixations")
            page.fill("#n", str(args.n))
            page.fill("#hypotheses", "3")
            page.click("#render")
            page.wait_for_selector("figure.hypothesis img >> nth=2", timeout=300_000)
            page.wait_for_selector("#scores tbody tr")  # the score table fills in after the images
            png = page.screenshot(full_page=True)
            browser.close()
    atomic_write(args.out, lambda t: Path(t).write_bytes(png))
    print(f"Written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
