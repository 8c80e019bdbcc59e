"""Serving: request -> PNG through ``metamergen serve`` against a direct pipeline call, and batching.

Both measurements use one loaded pipeline and real HTTP on a loopback port (uvicorn in this
process, :class:`metamergen.serve.client.MetamerGenClient` as the client), the scene registered
and encoded beforehand (as a trial registers it at scene onset):

1. **latency**: one client, one request at a time: the served render (HTTP, JSON, queue, batching
   wait window, worker, PNG encoding, base64) against ``pipe(scene=..., fixations=[...])`` called
   directly for the same render; ratio served / direct (goal <= 1.05 at 20 steps on the demo
   model), p50 / p95 of each;
2. **throughput**: ``--clients`` concurrent clients (threads), each sending ``--requests-per-client``
   renders of its own fixation lists, against the server batching (``--max-batch``, default 8) and
   not batching (max batch 1); images / s, the ratio, and p50 / p95 of request latency.

Models: the bundled demo model (default), ``--model FOLDER`` (any saved pipeline, e.g. a
full-size one on a GPU), ``--sd15`` (the SD1.5-size architecture with random weights of
``benchlib``) or ``--tiny`` (smoke test). The paper's 5 s window is a GPU figure; on a CPU read the
ratios.

    python bench/serve.py [--tiny | --sd15 | --model FOLDER] [--device cuda] [--steps 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import torch  # noqa: E402

NAME = "serve"
TARGET = 1.05  # served / direct latency at 20 steps on the demo model


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=5, warmup=1)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=None, help="a saved pipeline folder (default: the bundled demo model)")
    which.add_argument("--sd15", action="store_true", help="SD1.5-size architecture, random weights (benchlib)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps per render (default 20)")
    p.add_argument(
        "--throughput-steps", type=int, default=None, help="DDIM steps in the throughput test (default --steps)"
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent clients in the throughput test (default 8)")
    p.add_argument("--requests-per-client", type=int, default=2, help="renders each client sends (default 2)")
    p.add_argument("--max-batch", type=int, default=8, help="the batching server's max batch (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="the servers' wait window (default 10)")
    p.add_argument("--scene-size", type=int, nargs=2, default=None, metavar=("W", "H"), help="default: the model's")
    return p


def load(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Any, str, int]:
    """The pipeline, its record name, and its native output side in pixels."""
    if args.tiny or args.sd15:
        comp = bl.build_components(args.tiny, device, dtype, seed=args.seed)
        return comp.pipeline(), "tiny-random" if args.tiny else "sd15-random-weights", comp.resolution
    from metamergen.demo.run import DEMO_MODEL
    from metamergen.loading import load_model

    loaded = load_model(model=args.model or str(DEMO_MODEL), device=str(device), dtype=args.dtype)
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=True)
    name = "demo model" if args.model is None else loaded.description  # not this machine's absolute path
    return pipe, name, int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


@contextmanager
def serving(pipe: Any, model: str, max_batch: int, wait_ms: float, clients: int) -> Iterator[str]:
    """``metamergen serve``'s app for ``pipe`` under uvicorn on a free loopback port; yields its URL."""
    import uvicorn

    from metamergen.serve.app import create_app
    from metamergen.serve.config import Limits, ServeConfig

    config = ServeConfig(
        model=model, max_batch=max_batch, batch_wait_ms=wait_ms, warmup=False, limits=Limits(max_queue=4 * clients)
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(pipe, config), host="127.0.0.1", port=0, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    from metamergen.serve.metrics import percentile

    return {"p50": percentile(list(seconds), 50), "p95": percentile(list(seconds), 95)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    from metamergen.fixations.records import Scanpath
    from metamergen.serve.client import MetamerGenClient

    pipe, model, side = load(args, device, dtype)
    cpu_seconds: dict[str, list[float]] = {}

    def cpu_timed(name: str, fn: Any) -> Any:
        """``fn``, also recording the process's CPU seconds (all threads: server, worker and client live
        in this process): the work done, which other jobs sharing the machine do not inflate."""

        def call() -> None:
            start = time.process_time()
            fn()
            cpu_seconds.setdefault(name, []).append(time.process_time() - start)

        return call

    bl.log(f"[{NAME}] {model} on {device} ({args.dtype}), {args.steps} steps, output {side} px")
    width, height = args.scene_size or (side, side)
    image = bl.synthetic_scene(width, height, seed=args.seed)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    scene_png = buf.getvalue()
    n_throughput = args.clients * args.requests_per_client
    lists = bl.random_fixation_lists(max(n_throughput, 3), width, height, seed=args.seed)
    latency_list = lists[2].tolist()  # 3 fixations (the lists' counts cycle 1, 2, 3, 5, 10)
    direct_scene = pipe.encode_scene(image)
    throughput_steps = args.throughput_steps or args.steps

    def direct() -> None:
        scanpath = Scanpath.from_points(latency_list, width=width, height=height)
        pipe(
            scene=direct_scene,
            fixations=[scanpath],
            num_images_per_prompt=1,
            num_inference_steps=args.steps,
            generator=[torch.Generator().manual_seed(args.seed)],
        )

    with (
        serving(pipe, model, args.max_batch, args.batch_wait_ms, args.clients) as batched_url,
        serving(pipe, model, 1, args.batch_wait_ms, args.clients) as single_url,
    ):
        clients = {url: MetamerGenClient(url, timeout=3600) for url in (batched_url, single_url)}
        scene_ids = {url: c.upload_scene(scene_png, name="scene.png")["scene_id"] for url, c in clients.items()}

        def served() -> None:
            clients[batched_url].render(scene_ids[batched_url], latency_list, seed=args.seed, steps=args.steps)

        bl.log(f"[{NAME}] latency: direct vs served, {args.repeats} interleaved repeats")
        latency = bl.interleaved(
            {"direct": cpu_timed("direct", direct), "served": cpu_timed("served", served)},
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
            log=bl.log,
        )

        request_seconds: dict[str, list[float]] = {}

        def burst(url: str, case: str) -> None:
            client = clients[url]
            errors: list[BaseException] = []

            def one_client(c: int) -> None:
                try:
                    for r in range(args.requests_per_client):
                        i = c * args.requests_per_client + r
                        start = time.perf_counter()
                        client.render(scene_ids[url], lists[i].tolist(), seed=args.seed + i, steps=throughput_steps)
                        request_seconds.setdefault(case, []).append(time.perf_counter() - start)
                except BaseException as err:  # noqa: BLE001 - re-raised below, in the timing thread
                    errors.append(err)

            threads = [threading.Thread(target=one_client, args=(c,)) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

        names = {f"batched (max {args.max_batch})": batched_url, "unbatched (max 1)": single_url}
        cases = {name: cpu_timed(name, lambda url=url, name=name: burst(url, name)) for name, url in names.items()}
        bl.log(f"[{NAME}] throughput: {args.clients} clients x {args.requests_per_client} renders")
        throughput = bl.interleaved(cases, repeats=args.repeats, warmup=args.warmup, device=device, log=bl.log)
        batch_sizes = clients[batched_url].metrics()["batch_sizes"]
        for c in clients.values():
            c.close()
    # warm-up bursts' request times are not kept apart from the timed ones; keep only the timed
    per_burst = args.clients * args.requests_per_client
    request_seconds = {k: v[args.warmup * per_burst :] for k, v in request_seconds.items()}

    med = {**{k: bl.median(v) for k, v in latency.items()}, **{k: bl.median(v) for k, v in throughput.items()}}
    cpu_seconds = {k: v[args.warmup :] for k, v in cpu_seconds.items()}
    cpu_med = {k: bl.median(v) for k, v in cpu_seconds.items()}
    overhead = med["served"] / med["direct"]
    cpu_overhead = cpu_med["served"] / cpu_med["direct"]
    batched, single = list(cases)
    ips = {k: n_throughput / med[k] for k in cases}
    speedup = ips[batched] / ips[single]
    cpu_speedup = cpu_med[single] / cpu_med[batched]
    verdict = "PASS" if overhead <= TARGET else "MISS"
    lat_pct = {k: percentiles(v) for k, v in latency.items()}
    req_pct = {k: percentiles(v) for k, v in request_seconds.items()}
    rows = [
        [
            "latency",
            "direct pipeline call",
            bl.fmt_ms(lat_pct["direct"]["p50"]),
            bl.fmt_ms(lat_pct["direct"]["p95"]),
            "1.00x",
            f"{cpu_med['direct']:.3f}",
            "1.00x",
            "",
        ],
        [
            "latency",
            "served (HTTP, PNG)",
            bl.fmt_ms(lat_pct["served"]["p50"]),
            bl.fmt_ms(lat_pct["served"]["p95"]),
            bl.fmt_x(overhead),
            f"{cpu_med['served']:.3f}",
            bl.fmt_x(cpu_overhead),
            f"{verdict} (goal <= {TARGET})",
        ],
        *[
            [
                f"{args.clients} clients",
                k,
                bl.fmt_ms(req_pct[k]["p50"]),
                bl.fmt_ms(req_pct[k]["p95"]),
                bl.fmt_x(ips[k] / ips[single]),
                f"{cpu_med[k]:.3f}",
                bl.fmt_x(cpu_med[single] / cpu_med[k]),
                f"{ips[k]:.2f} images/s",
            ]
            for k in cases
        ],
    ]
    table = bl.make_table(
        f"Serving ({model}, {args.steps} steps, {side} px, {args.dtype}, {device.type})",
        ["test", "case", "p50 ms", "p95 ms", "ratio", "CPU s", "CPU ratio", "note"],
        rows,
        [
            "latency: one request at a time, scene encoded beforehand; served = loopback HTTP + JSON + queue + "
            f"{args.batch_wait_ms:g} ms batching window + worker + PNG/base64; ratio of medians",
            f"throughput: {args.clients} threads x {args.requests_per_client} renders of different fixation lists "
            f"at {throughput_steps} steps; "
            f"ratio = images/s vs max batch 1; batch sizes seen: {batch_sizes}",
            "CPU s: median process CPU seconds per case (all threads), which another job competing for the cores "
            "does not inflate; CPU ratio: served / direct, and unbatched / batched",
            f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up round(s); "
            "the paper's 5 s window is a GPU figure",
        ],
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(args, model_name=model, scene_size=[width, height], output_size=side),
        raw_seconds={"latency": latency, "throughput": throughput, "requests": request_seconds},
        median_seconds=med,
        ratios={
            "served_over_direct": overhead,
            "batched_over_unbatched_images_per_second": speedup,
            "served_over_direct_cpu": cpu_overhead,
            "unbatched_over_batched_cpu": cpu_speedup,
        },
        cpu_seconds=cpu_seconds,
        targets={
            "served_over_direct": {
                "metric": "served / direct latency",
                "target": f"<= {TARGET}",
                "value": overhead,
                "verdict": verdict,
            }
        },
        percentiles_seconds={"latency": lat_pct, "requests": req_pct},
        images_per_second=ips,
        batch_sizes=batch_sizes,
        table=table,
    )


if __name__ == "__main__":
    main()
