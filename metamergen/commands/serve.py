"""``metamergen serve``: one pipeline, loaded once, behind HTTP for live (gaze-contingent) rendering."""

from __future__ import annotations

import argparse
import os
from typing import Any

from metamergen.commands._common import add_model_arguments, add_sampling_arguments, check_sampling_arguments

__all__ = ["API_KEY_ENV", "add_parser", "is_loopback", "run"]

HELP = "serve renders over HTTP for live experiments (default: the bundled demo model)"

#: Environment variable holding the API key (not a flag: flags show up in process listings).
API_KEY_ENV = "METAMERGEN_API_KEY"

_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve`` to the command line's subparsers."""
    s = subparsers.add_parser(
        "serve",
        help=HELP,
        description=HELP + ". API, limits and reproducing a trial offline: docs/serve.md; "
        f"interactive API docs at http://HOST:PORT/docs. Set {API_KEY_ENV} to require an X-API-Key header "
        "(needed to bind anything but a loopback address).",
    )
    add_model_arguments(s)
    add_sampling_arguments(s)  # the defaults a request inherits
    net = s.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    net.add_argument("--stimuli", default=None, help="folder whose image files requests may name as scenes")
    net.add_argument("--hypotheses", type=int, default=1, help="images per request when it does not say (default 1)")
    net.add_argument("--deadline-ms", type=float, default=None, help="report responses later than this (e.g. 5000)")
    net.add_argument("--no-warmup", action="store_true", help="skip the warm-up render at start")
    net.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    batch = s.add_argument_group("batching and memory")
    batch.add_argument("--max-batch", type=int, default=8, help="most requests per pipeline call (1 = no batching)")
    batch.add_argument(
        "--batch-wait-ms", type=float, default=10.0, help="wait for companions of a request (default 10)"
    )
    batch.add_argument("--max-queue", type=int, default=32, help="waiting requests before 503 (default 32)")
    batch.add_argument("--cache-mb", type=int, default=1024, help="scene cache budget, MiB (default 1024)")
    limits = s.add_argument_group("limits per request")
    limits.add_argument("--max-upload-mb", type=float, default=32.0, help="largest image file, MiB (default 32)")
    limits.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest scene, width x height")
    limits.add_argument("--max-fixations", type=int, default=1000, help="most fixations per request (default 1000)")
    limits.add_argument("--max-steps", type=int, default=200, help="most DDIM steps per request (default 200)")
    limits.add_argument("--max-hypotheses", type=int, default=8, help="most images per request (default 8)")
    s.set_defaults(func=run)
    return s


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    import ipaddress

    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _config(args: argparse.Namespace, api_key: str | None) -> Any:
    """The server's :class:`~metamergen.serve.config.ServeConfig` (model named once it is loaded)."""
    from pathlib import Path

    from metamergen.serve.config import Limits, RenderDefaults, ServeConfig

    try:
        return ServeConfig(
            model=args.model or ("tiny-random" if args.tiny else str(args.adapters)),
            device=args.device,
            dtype=args.dtype,
            defaults=RenderDefaults(
                steps=args.steps,
                guidance=args.guidance,
                guidance_scale=args.guidance_scale,
                foveal_scale=args.foveal_scale,
                peripheral_scale=args.peripheral_scale,
                peripheral_blur=args.peripheral_blur,
                off_image=args.off_image,
                hypotheses=args.hypotheses,
                deadline_ms=args.deadline_ms,
            ),
            limits=Limits(
                max_upload_bytes=int(args.max_upload_mb * 2**20),
                max_pixels=args.max_pixels,
                max_fixations=args.max_fixations,
                max_steps=args.max_steps,
                max_hypotheses=args.max_hypotheses,
                max_queue=args.max_queue,
            ),
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            cache_bytes=args.cache_mb * 2**20,
            stimuli=Path(args.stimuli) if args.stimuli else None,
            api_key=api_key,
            warmup=not args.no_warmup,
        )
    except (ValueError, NotADirectoryError) as err:
        raise SystemExit(f"error: {err}") from None


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen serve``."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise SystemExit(
            f"error: metamergen serve needs the serve extra ({err.name} is missing): pip install 'metamergen[serve]'."
        ) from None
    if sum(bool(getattr(args, k, None)) for k in ("tiny", "model", "adapters")) > 1:
        raise SystemExit("error: give only one of --model, --adapters, --tiny (none: the bundled demo model).")
    if args.revision and not args.model:
        raise SystemExit("error: --revision applies to --model only.")
    api_key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None:
        raise SystemExit(
            f"error: --host {args.host} makes the server reachable from other machines; set {API_KEY_ENV} "
            "to a secret (clients send it as the X-API-Key header), or bind 127.0.0.1."
        )
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"error: --port must be between 0 and 65535, got {args.port}.")
    if not (args.tiny or args.model or args.adapters):
        from metamergen.demo.run import DEMO_MODEL

        args.model = str(DEMO_MODEL)  # loaded exactly as `render --model <that folder>` loads it
    check_sampling_arguments(args)  # after the model is known: its default blur depends on it
    config = _config(args, api_key)  # every limit checked before the model loads
    import dataclasses

    from metamergen.commands._common import load_pipeline_from_args
    from metamergen.serve.app import create_app
    from metamergen.serve.logs import configure_logging

    configure_logging(args.log_level)
    pipe, model, revision = load_pipeline_from_args(args)
    app = create_app(pipe, dataclasses.replace(config, model=model, model_revision=revision))
    where = (
        f"http://{args.host}:{args.port}"
        if args.port
        else f"http://{args.host} on a free port (uvicorn's log names it)"
    )
    print(f"metamergen serve: {model} on {args.device}; {where} (API docs at /docs); Ctrl-C stops.", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0
