"""The paper's gaze-contingent trial, run against ``metamergen serve`` with a simulated eye tracker.

Each trial, as in the paper's experiment:

1. the scene is shown (and registered with the server, which encodes it once, during viewing);
2. the (simulated) tracker reports fixations until the trial's count N is reached;
3. the screen goes blank and the N fixations are sent; the hypothesis must arrive within the
   window (5 s in the paper, a GPU figure: on a CPU pass a longer ``--window-s``);
4. the hypothesis is shown for 200 ms and the participant answers same/different;
5. the trial is logged: one row of ``trials.csv``, and the hypothesis PNG with its ``render.json``
   in ``trials/<trial>/`` (reproducible offline with ``metamergen render``, docs/serve.md).

The responses are **simulated** (a noisy observer who says "same" more often the higher the SSIM
between hypothesis and scene): the CSV exercises the analysis, it says nothing about people.
``trials.csv`` has what ``metamergen analyze`` reads, a 0/1 ``same`` column (empty when the image
came too late: the analysis drops those rows) and the ``ssim`` and ``mse`` feature columns::

    metamergen serve &                                    # the bundled demo model, 127.0.0.1:8000
    python examples/live_trial.py --out trials --window-s 60
    metamergen analyze --responses trials/trials.csv --out trials/analysis

Needs the ``serve`` extra (the client uses httpx) and, for the scores, MetamerGen itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from metamergen.serve.client import MetamerGenClient, RequestTimeout, ServerBusy

EXAMPLE_SCENE = Path(__file__).resolve().parents[1] / "metamergen" / "assets" / "example_scene.png"

#: The paper's fixation counts N (a trial ends when the N-th fixation is reached).
FIXATION_COUNTS = (1, 2, 3, 5, 10)

#: Columns of trials.csv, in order.
COLUMNS = (
    "trial",
    "image_id",
    "scene",
    "scene_id",
    "n_fixations",
    "fixations",
    "seed",
    "same",
    "ssim",
    "mse",
    "timed_out",
    "deadline_missed",
    "request_ms",
    "server_total_ms",
    "batch_requests",
    "hypothesis",
)


@dataclass
class Fixation:
    """One fixation as an eye tracker reports it: image pixels (origin top-left) and a duration."""

    x: float
    y: float
    duration_ms: float


class SimulatedTracker:
    """Fixations clustered around a few points of interest, with saccades between them.

    A stand-in for an eye tracker's fixation stream (PsychoPy's ioHub, PyLink, Tobii, ...): it
    yields fixations one by one, in image pixels of the scene shown.
    """

    def __init__(self, width: int, height: int, rng: random.Random) -> None:
        self.width, self.height, self.rng = width, height, rng
        self.targets = [(rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height) for _ in range(4)]

    def fixations(self) -> Iterator[Fixation]:
        while True:
            cx, cy = self.rng.choice(self.targets)
            spread = 0.04 * min(self.width, self.height)
            x = min(max(self.rng.gauss(cx, spread), 0.0), self.width - 1)
            y = min(max(self.rng.gauss(cy, spread), 0.0), self.height - 1)
            yield Fixation(x, y, self.rng.uniform(200.0, 400.0))


def simulated_response(ssim: float, rng: random.Random) -> int:
    """A noisy observer: P("same") rises with SSIM (a logistic around 0.3). 1 = "same"."""
    return int(rng.random() < 1.0 / (1.0 + math.exp(-8.0 * (ssim - 0.3))))


def scores(scene_png: bytes, hypothesis_png: bytes) -> dict[str, float]:
    """SSIM and MSE of the hypothesis against the scene (MetamerGen's weight-free metrics)."""
    import io

    from PIL import Image

    from metamergen.evaluation.metrics import MSE, SSIM

    scene = Image.open(io.BytesIO(scene_png)).convert("RGB")
    hypothesis = Image.open(io.BytesIO(hypothesis_png)).convert("RGB")
    return {"ssim": float(SSIM()([scene], [hypothesis])[0]), "mse": float(MSE()([scene], [hypothesis])[0])}


def run_trials(
    client: MetamerGenClient,
    scenes: Sequence[Path],
    out: Path,
    *,
    trials: int,
    window_s: float,
    steps: int | None,
    seed: int,
    realtime: bool,
) -> Path:
    """Run ``trials`` trials over ``scenes`` and write ``out/trials.csv``; returns its path."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in range(trials):
        path = scenes[t % len(scenes)]
        data = path.read_bytes()
        scene = client.upload_scene(data, name=path.name)  # 1. scene onset: registered (cached after the first)
        n = FIXATION_COUNTS[t % len(FIXATION_COUNTS)]
        tracker = SimulatedTracker(scene["width"], scene["height"], rng)
        fixations = []
        for fixation in tracker.fixations():  # 2. until the N-th fixation
            fixations.append(fixation)
            if realtime:
                time.sleep(fixation.duration_ms / 1e3)
            if len(fixations) == n:
                break
        row = {
            "trial": t,
            "scene": path.name,
            "scene_id": scene["scene_id"],
            "n_fixations": n,
            "fixations": json.dumps([[round(f.x, 2), round(f.y, 2)] for f in fixations]),
            "seed": seed + t,
        }
        sent = time.perf_counter()  # 3. blank screen: request, and wait within the window
        try:
            result = client.render(
                scene["scene_id"],
                [(f.x, f.y) for f in fixations],
                seed=seed + t,
                steps=steps,
                deadline_ms=window_s * 1e3,
                timeout=window_s,
            )
        except (RequestTimeout, ServerBusy) as err:
            row.update(timed_out=1, deadline_missed=1, request_ms=round((time.perf_counter() - sent) * 1e3, 1))
            row["image_id"] = f"trial{t:03d}-none"
            print(f"trial {t}: no image within {window_s} s ({err.message})", file=sys.stderr)
            rows.append(row)
            continue
        request_ms = (time.perf_counter() - sent) * 1e3
        folder = result.save(out / f"trial{t:03d}")  # the PNG and render.json, as `metamergen render` writes them
        measured = scores(data, result.png[0])
        row.update(
            image_id=f"trial{t:03d}-{result.names[0]}",
            same=simulated_response(measured["ssim"], rng),  # 4. 200 ms test image, same/different
            timed_out=0,
            deadline_missed=int(result.deadline_missed),
            request_ms=round(request_ms, 1),
            server_total_ms=round(result.timing["total_ms"], 1),
            batch_requests=result.batch["requests"],
            hypothesis=str(folder / result.names[0]),
            **{k: round(v, 6) for k, v in measured.items()},
        )
        rows.append(row)  # 5. log the trial
        print(f"trial {t}: N={n}, {request_ms:.0f} ms, same={row['same']}, ssim={row['ssim']:.3f}")
    table = out / "trials.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return table


def main(argv: Sequence[str] | None = None, client: MetamerGenClient | None = None) -> Path:
    """Command-line entry point; ``client`` replaces the HTTP client (tests pass FastAPI's TestClient's)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8000", help="where metamergen serve listens")
    p.add_argument("--scenes", nargs="+", type=Path, default=[EXAMPLE_SCENE], help="scene image files")
    p.add_argument("--out", type=Path, default=Path("trials"), help="output folder (trials.csv, trial folders)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--window-s", type=float, default=5.0, help="how long to wait for the image (paper: 5 s)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the server's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--realtime", action="store_true", help="wait each fixation's duration, as a viewer would")
    args = p.parse_args(argv)
    own = client is None
    client = client or MetamerGenClient(args.server)
    try:
        health = client.health()
        print(f"server: {health['model']} on {health['device']} ({health['status']})")
        table = run_trials(
            client,
            args.scenes,
            args.out,
            trials=args.trials,
            window_s=args.window_s,
            steps=args.steps,
            seed=args.seed,
            realtime=args.realtime,
        )
    finally:
        if own:
            client.close()
    print(f"wrote {table}; next: metamergen analyze --responses {table} --out {args.out / 'analysis'}")
    return table


if __name__ == "__main__":
    main()
