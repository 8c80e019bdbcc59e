"""``metamergen serve``: the HTTP service, its batching worker, its limits, and the client.

Most tests talk to the app through FastAPI's ``TestClient`` (no socket); the disconnect and the
demo-model tests run uvicorn on a loopback port. Timing is never guessed: where a test needs the
worker busy, the pipeline is wrapped in a :class:`Gate` that holds each pipeline call until the
test opens it, so which requests wait together is decided by the test, not by the machine's speed.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import loopback, make_scene, wait_until
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the serve extra (pip install metamergen[serve]) is not installed")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from metamergen.serve.app import create_app  # noqa: E402
from metamergen.serve.cache import Scene, SceneCache, scene_id  # noqa: E402
from metamergen.serve.client import MetamerGenClient, RequestTimeout, ServeError, ServerBusy  # noqa: E402
from metamergen.serve.config import Limits, RenderDefaults, ServeConfig  # noqa: E402
from metamergen.serve.metrics import percentile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = 2  # every render here: the machinery is under test, not the images


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


SCENE = make_scene(90, 60, seed=1)
SCENE_PNG = png_bytes(SCENE)


def config(**kw: Any) -> ServeConfig:
    limits = kw.pop("limits", Limits())
    defaults = kw.pop("defaults", RenderDefaults(steps=STEPS))
    return ServeConfig(model="tiny-random", warmup=False, limits=limits, defaults=defaults, **kw)


class Gate:
    """The pipeline, with every render call held until :meth:`open` (encoding passes straight through)."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._open = threading.Event()
        self.entered = threading.Semaphore(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.release()
        assert self._open.wait(120), "the test never opened the gate"
        return self._pipe(*args, **kwargs)

    def open(self) -> None:
        self._open.set()


@contextmanager
def served(pipe: Any, **kw: Any) -> Iterator[tuple[TestClient, MetamerGenClient]]:
    app = create_app(pipe, config(**kw))
    with TestClient(app) as http:
        yield http, MetamerGenClient(client=http)


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# ---------------------------------------------------------------------------------- basics


def test_upload_encodes_once_and_renders_pngs_with_the_render_record(pipe):
    with served(pipe) as (http, client):
        assert client.health()["status"] == "ok"
        scene = client.upload_scene(SCENE_PNG, name="dir/scene.png")
        assert scene["scene_id"] == scene_id(SCENE) and scene["name"] == "scene.png"
        assert (scene["width"], scene["height"], scene["encoded_blurs"]) == (90, 60, [0.25])
        again = http.post("/scenes", params={"name": "other.png"}, content=SCENE_PNG)
        assert again.status_code == 200 and again.json()["scene_id"] == scene["scene_id"]

        result = client.render(scene["scene_id"], [[10, 10], [200, 5], [30, 40]], hypotheses=2, seed=7)
        assert result.names == ["hypothesis_000_seed7.png", "hypothesis_001_seed8.png"]
        assert [im.size for im in result.images()] == [(40, 26)] * 2  # 90x60 at the tiny model's 32^2 px area
        assert result.png[0] != result.png[1]  # two seeds, two images
        assert result.record["fixations"] == [[10.0, 10.0], [30.0, 40.0]]
        assert result.record["seeds"] == [7, 8] and result.record["outputs"] == result.names
        assert any("dropped 1 of 3" in w for w in result.warnings)
        assert result.batch == {"requests": 1, "images": 2} and not result.deadline_missed

        client.render(scene["scene_id"], [[10, 10]], n=1)
        stats = client.metrics()
        assert stats["cache"]["encodings"] == 1  # upload encoded; both renders reused it
        assert stats["renders"] == 2 and stats["images"] == 3 and stats["batch_sizes"] == {"1": 2}
        assert stats["latency_ms"]["count"] == 2 and stats["latency_ms"]["p50"] > 0
        assert stats["device"] == "cpu" and stats["model"] == "tiny-random"
        schema = http.get("/openapi.json").json()
        assert {"/render", "/scenes", "/scenes/stimulus", "/health", "/metrics"} <= set(schema["paths"])
        assert http.get("/docs").status_code == 200


def test_a_served_render_equals_metamergen_render_bit_for_bit(pipe, tmp_path: Path, capsys):
    """The record and every pixel (indeed every PNG byte) of a live render, against the offline command."""
    from metamergen.commands import main

    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    SCENE.save(stimuli / "scene.png")
    with served(pipe, stimuli=stimuli) as (_, client):
        scene = client.stimulus_scene("scene.png")
        live = client.render(scene["scene_id"], [[12.5, 30], [70, 20.25]], hypotheses=2, seed=3, foveal_scale=1.0)
    live.save(tmp_path / "live")
    main(
        [
            "render",
            "--tiny",
            "--image",
            str(stimuli / "scene.png"),
            "--fixations",
            "12.5,30;70,20.25",
            "--num-images",
            "2",
            "--seed",
            "3",
            "--steps",
            str(STEPS),
            "--foveal-scale",
            "1.0",
            "--out",
            str(tmp_path / "offline"),
        ]
    )
    capsys.readouterr()
    for name in [*live.names, "render.json"]:
        assert (tmp_path / "live" / name).read_bytes() == (tmp_path / "offline" / name).read_bytes(), name
    offline = [np.asarray(Image.open(tmp_path / "offline" / n)) for n in live.names]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(offline, live.images()))


# ---------------------------------------------------------------------------------- batching and the queue


def test_concurrent_compatible_requests_share_one_pipeline_call(pipe):
    gate = Gate(pipe)
    with served(gate, max_batch=4, batch_wait_ms=0) as (_, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        first, first_out = in_thread(client.render, sid, [[5, 5]])
        assert gate.entered.acquire(timeout=120)  # the worker is inside the first call
        threads = [in_thread(client.render, sid, [[10 + i, 10]], seed=i) for i in range(3)]
        wait_until(lambda: client.metrics()["queue"]["depth"] == 3)
        other = in_thread(client.render, sid, [[10, 10]], steps=1)  # incompatible: keeps its place
        wait_until(lambda: client.metrics()["queue"]["depth"] == 4)
        gate.open()
        for thread, _ in [(first, first_out), *threads, other]:
            thread.join(120)
        stats = client.metrics()
    results = [out["value"] for _, out in threads]
    assert [r.batch["requests"] for r in results] == [3, 3, 3]
    assert first_out["value"].batch["requests"] == 1 and other[1]["value"].batch["requests"] == 1
    assert stats["batch_sizes"] == {"1": 2, "3": 1} and stats["batches"] == 3
    assert len({r.png[0] for r in results}) == 3  # each request got its own image back


def test_requests_arriving_within_the_wait_window_are_batched(pipe):
    with served(pipe, max_batch=3, batch_wait_ms=60_000) as (_, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        threads = [in_thread(client.render, sid, [[10 * i + 5, 20]], seed=i) for i in range(3)]
        for thread, _ in threads:
            thread.join(120)
        stats = client.metrics()
    assert stats["batch_sizes"] == {"3": 1}, stats["batch_sizes"]
    assert all(out["value"].batch == {"requests": 3, "images": 3} for _, out in threads)


def test_a_full_queue_answers_503_with_retry_after(pipe):
    gate = Gate(pipe)
    with served(gate, max_batch=1, limits=Limits(max_queue=2)) as (http, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        running = in_thread(client.render, sid, [[5, 5]])
        assert gate.entered.acquire(timeout=120)
        queued = [in_thread(client.render, sid, [[5, 5]], seed=i) for i in (1, 2)]
        wait_until(lambda: client.metrics()["queue"]["depth"] == 2)
        refused = http.post("/render", json={"scene_id": sid, "fixations": [[5, 5]]})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["message"]
        with pytest.raises(ServerBusy) as busy:
            client.render(sid, [[5, 5]])
        assert busy.value.retry_after >= 1
        gate.open()
        for thread, out in [running, *queued]:
            thread.join(120)
            assert "value" in out, out
        assert client.metrics()["rejected_busy"] == 2


def test_a_missed_deadline_is_reported_in_the_response_and_the_metrics(pipe):
    with served(pipe) as (_, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        late = client.render(sid, [[5, 5]], deadline_ms=0.001)  # no render takes a microsecond
        in_time = client.render(sid, [[5, 5]], deadline_ms=600_000)
        stats = client.metrics()
    assert late.deadline_missed and late.deadline_ms == 0.001 and late.timing["total_ms"] > 0.001
    assert not in_time.deadline_missed
    assert stats["deadline_misses"] == 1 and stats["renders"] == 2


def open_render(url: str, body: dict) -> socket.socket:
    """Send ``POST /render`` on a raw connection and leave it open (closing it is the disconnect)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    conn = socket.create_connection((host, int(port)))
    head = f"POST /render HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    conn.sendall(head.encode() + data)
    return conn


def test_a_client_that_goes_away_has_its_work_dropped(pipe):
    """Queued work of a gone client is skipped; a running batch nobody waits for stops early."""
    gate = Gate(pipe)
    app = create_app(gate, config(max_batch=1))
    with loopback(app) as url, MetamerGenClient(url) as client:
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        running = open_render(url, {"scene_id": sid, "fixations": [[5, 5]]})
        assert gate.entered.acquire(timeout=120)  # its batch is inside the pipeline call
        queued = open_render(url, {"scene_id": sid, "fixations": [[5, 5]], "seed": 1})
        wait_until(lambda: client.metrics()["queue"]["depth"] == 1)
        running.close()
        queued.close()
        wait_until(lambda: client.metrics()["cancelled"] == 2)
        assert client.metrics()["queue"]["depth"] == 0  # the queued one left the queue at once
        gate.open()
        wait_until(lambda: client.metrics()["batches"] == 1)
        stats = client.metrics()
    assert stats["interrupted_batches"] == 1  # the running call stopped at its first step end
    assert stats["batch_sizes"] == {"1": 1} and stats["renders"] == 0  # the queued one never ran
    assert stats["responses"].get("499") == 2


def test_the_client_turns_a_timeout_into_request_timeout_and_errors_into_serve_error():
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = MetamerGenClient(client=httpx.Client(transport=httpx.MockTransport(timeout), base_url="http://x"))
    with pytest.raises(RequestTimeout, match="within 0.5 s"):
        client.render("0" * 32, [[1, 2]], timeout=0.5)

    def refuse(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"scene_id": "0" * 32, "fixations": [[1.0, 2.0]], "n": 1, "seed": 0}
        return httpx.Response(422, json={"message": "n is wrong", "detail": []})

    client = MetamerGenClient(client=httpx.Client(transport=httpx.MockTransport(refuse), base_url="http://x"))
    with pytest.raises(ServeError, match="HTTP 422: n is wrong"):
        client.render("0" * 32, [[1, 2]], n=1)


# ---------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_input_server(pipe):
    limits = Limits(max_steps=50, max_hypotheses=4, max_fixations=5, max_pixels=200 * 200, max_json_bytes=4096)
    app = create_app(pipe, config(limits=limits))
    with TestClient(app) as http:
        sid = http.post("/scenes", content=SCENE_PNG).json()["scene_id"]
        yield http, sid


def _render_body(sid: str, **kw: Any) -> dict:
    return {"scene_id": sid, "fixations": [[10, 10]], **kw}


TRUNCATED_PNG = SCENE_PNG[: len(SCENE_PNG) // 2]
BIG_PNG = png_bytes(make_scene(300, 300))

BAD_INPUTS = [
    # (case, route, what to send, status, part of the message)
    ("unknown scene", "render", {"scene_id": "0" * 32}, 404, "No scene 000"),
    ("scene id not hex", "render", {"scene_id": "../../etc"}, 422, "scene_id: String should match pattern"),
    ("unknown option", "render", {"foveal_scal": 1.0}, 422, "foveal_scal: Extra inputs are not permitted"),
    ("fixation triple", "render", {"fixations": [[1, 2, 3]]}, 422, "fixations.0"),
    ("fixation string", "render", {"fixations": [["a", 1]]}, 422, "fixations.0.0"),
    ("number as string", "render", {"steps": "5"}, 422, "steps: Input should be a valid integer"),
    ("steps 0", "render", {"steps": 0}, 422, "steps: Input should be greater than or equal to 1"),
    ("steps over limit", "render", {"steps": 51}, 422, "steps must be between 1 and 50"),
    ("hypotheses over limit", "render", {"hypotheses": 5}, 422, "hypotheses must be between 1 and 4"),
    ("CFG scale under cfg++", "render", {"guidance_scale": 7.5}, 422, "outside [0, 1]"),
    ("unknown guidance", "render", {"guidance": "ddim"}, 422, "guidance: Input should be 'cfg++' or 'cfg'"),
    ("blur 0", "render", {"peripheral_blur": 0}, 422, "peripheral_blur: Input should be greater than 0"),
    ("negative scale", "render", {"foveal_scale": -1}, 422, "foveal_scale: Input should be greater than or equal to 0"),
    ("negative seed", "render", {"seed": -1}, 422, "seed"),
    ("zero deadline", "render", {"deadline_ms": 0}, 422, "deadline_ms"),
    ("off image, policy error", "render", {"fixations": [[500, 10]], "off_image": "error"}, 422, "off the image"),
    ("prefix too long", "render", {"fixations": [[1, 1], [2, 2]], "n": 3}, 422, "first 3 fixations"),
    ("too many fixations", "render", {"fixations": [[1, 1]] * 6}, 422, "limit of 5 per request"),
    ("NaN coordinate", "render-raw", b'{"scene_id": "SID", "fixations": [[NaN, 1]]}', 422, "finite number"),
    ("not JSON", "render-raw", b'{"scene_id": ', 422, "JSON decode error"),
    (
        "JSON over the byte limit",
        "render-raw",
        b'{"fixations": [' + b"[1, 1], " * 600 + b"[1, 1]]}",
        413,
        "limit of 4096",
    ),
    ("empty upload", "upload", b"", 422, "The body is empty"),
    ("text as image", "upload", b"hello, not an image", 422, "is not an image Pillow can read"),
    ("truncated PNG", "upload", TRUNCATED_PNG, 422, "truncated or corrupt"),
    ("too many pixels", "upload", BIG_PNG, 413, "90000 pixels, more than this server's limit of 40000"),
    ("multipart form", "upload-form", SCENE_PNG, 415, "not multipart/form-data"),
    ("no stimulus folder", "stimulus", {"name": "scene.png"}, 404, "has no stimulus folder"),
    ("unknown condition", "render", {"condition": "fovea"}, 422, "condition: Input should be 'both'"),
    ("stream: steps over limit", "stream", {"steps": 51}, 422, "steps must be between 1 and 50"),
    ("stream: unknown scene", "stream", {"scene_id": "0" * 32}, 404, "No scene 000"),
    ("model view: render option", "view", {"steps": 5}, 422, "steps: Extra inputs are not permitted"),
    (
        "model view: off image, policy error",
        "view",
        {"fixations": [[10, 500]], "off_image": "error"},
        422,
        "off the image",
    ),
    ("model view: blur over 1", "view", {"peripheral_blur": 2}, 422, "peripheral_blur: Input should be less than"),
    ("model view: unknown scene", "view", {"scene_id": "f" * 32}, 404, "No scene fff"),
    ("scene image: unknown scene", "image", "0" * 32, 404, "No scene 000"),
    ("scene image: id not hex", "image", "ZZ" * 16, 422, "String should match pattern"),
    ("demo scene: unknown name", "demo", {"name": "../scene-001000000.png"}, 404, "No demo scene"),
    ("demo scene: empty name", "demo", {"name": ""}, 422, "name: String should have at least 1 character"),
]


@pytest.mark.parametrize(("case", "route", "payload", "status", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_json_error_saying_what_is_wrong(bad_input_server, case, route, payload, status, message):
    http, sid = bad_input_server
    if route == "render":
        response = http.post("/render", json={**_render_body(sid), **payload})
    elif route == "render-raw":
        response = http.post(
            "/render", content=payload.replace(b"SID", sid.encode()), headers={"content-type": "application/json"}
        )
    elif route == "upload":
        response = http.post("/scenes", params={"name": "bad.png"}, content=payload)
    elif route == "upload-form":
        response = http.post("/scenes", files={"file": ("scene.png", payload, "image/png")})
    elif route == "stream":
        response = http.post("/render/stream", json={**_render_body(sid), **payload})
    elif route == "view":
        response = http.post("/model-view", json={**_render_body(sid), **payload})
    elif route == "image":
        response = http.get(f"/scenes/{payload}/image")
    elif route == "demo":
        response = http.post("/scenes/demo", json=payload)
    else:
        response = http.post("/scenes/stimulus", json=payload)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"  # an error, not the start of an event stream
    body = response.json()
    assert message in body["message"], body["message"]
    assert "Traceback" not in response.text


def test_the_bad_input_table_is_large_and_every_error_was_a_4xx(bad_input_server):
    http, _ = bad_input_server
    assert len(BAD_INPUTS) >= 15
    responses = http.get("/metrics").json()["responses"]
    assert not any(code.startswith("5") for code in responses), responses


@pytest.fixture()
def stimuli(tmp_path: Path) -> Path:
    root = tmp_path / "stimuli"
    (root / "sub").mkdir(parents=True)
    SCENE.save(root / "scene.png")
    make_scene(40, 30, seed=2).save(root / "sub" / "nested.png")
    outside = tmp_path / "secret"
    outside.mkdir()
    make_scene(40, 30, seed=3).save(outside / "secret.png")
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in.png").symlink_to(root / "scene.png")
    return root


TRAVERSALS = [
    ("../secret/secret.png", 422, "contains '..'"),
    ("sub/../../secret/secret.png", 422, "contains '..'"),
    ("/etc/passwd", 422, "is absolute"),
    ("~/secret.png", 422, "is absolute"),
    ("C:/Windows/win.ini", 422, "is absolute"),
    ("..\\secret\\secret.png", 422, "'/' separators"),
    ("scene.png\x00.txt", 422, "'/' separators"),
    ("link_out.png", 403, "resolves outside the stimulus folder"),
    ("dir_out/secret.png", 403, "resolves outside the stimulus folder"),
    ("%2e%2e/secret/secret.png", 404, "No stimulus"),
    ("missing.png", 404, "No stimulus"),
    ("sub", 404, "is not a file"),
]


def test_stimulus_names_cannot_leave_the_stimulus_folder(pipe, stimuli: Path):
    with served(pipe, stimuli=stimuli) as (http, client):
        for name, status, message in TRAVERSALS:
            response = http.post("/scenes/stimulus", json={"name": name})
            assert response.status_code == status, (name, response.text)
            assert message in response.json()["message"], (name, response.json())
        assert client.stimulus_scene("sub/nested.png")["name"] == str(stimuli / "sub" / "nested.png")
        assert client.stimulus_scene("link_in.png")["scene_id"] == scene_id(SCENE)  # a link inside is fine
        assert client.stimuli() == ["link_in.png", "scene.png", "sub/nested.png"]  # no link out listed


def test_oversize_uploads_are_refused_before_and_while_streaming(pipe):
    with served(pipe, limits=Limits(max_upload_bytes=1000)) as (http, _):
        declared = http.post("/scenes", content=SCENE_PNG)  # Content-Length over the limit
        streamed = http.post("/scenes", content=iter([SCENE_PNG[:800], SCENE_PNG[800:]]))  # chunked, no length
        small = http.post("/scenes", content=png_bytes(Image.new("RGB", (8, 8))))
    assert len(SCENE_PNG) > 1000
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/json"
        assert "limit of 1000 bytes" in response.json()["message"]
    assert small.status_code == 201


def test_a_slow_client_holds_only_its_own_connection(pipe):
    """An upload dribbled in over seconds, and a render response nobody reads, do not stall others."""
    other = make_scene(40, 30, seed=7)
    with loopback(create_app(pipe, config())) as url, MetamerGenClient(url) as client:
        host, port = url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)))
        head = f"POST /scenes?name=slow.png HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        slow.sendall(f"{head}Content-Length: {len(SCENE_PNG)}\r\n\r\n".encode() + SCENE_PNG[:100])
        sid = client.upload_scene(png_bytes(other))["scene_id"]  # served while the slow body is incomplete
        assert client.render(sid, [[5, 5]]).images()[0].size[0] > 0
        deaf = open_render(url, {"scene_id": sid, "fixations": [[6, 6]]})  # never reads its response
        for i in range(100, len(SCENE_PNG), 400):  # the rest, slowly
            slow.sendall(SCENE_PNG[i : i + 400])
            time.sleep(0.01)
        slow.settimeout(60)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += slow.recv(65536)
        assert reply.startswith(b"HTTP/1.1 201")  # the slow upload itself succeeds
        assert client.render(sid, [[7, 7]]).record["fixations"] == [[7.0, 7.0]]
        slow.close()
        deaf.close()


def test_an_api_key_guards_every_route_but_health(pipe):
    key = "k" * 32
    with served(pipe, api_key=key) as (http, _):
        assert http.get("/health").status_code == 200
        missing = http.get("/metrics")
        wrong = http.get("/metrics", headers={"X-API-Key": "x" * 32})
        assert missing.status_code == wrong.status_code == 401
        assert "X-API-Key" in missing.json()["message"] and "wrong" in wrong.json()["message"]
        assert http.post("/scenes", content=SCENE_PNG).status_code == 401
        assert MetamerGenClient(client=http, api_key=key).metrics()["renders"] == 0


def test_the_least_recently_used_scene_is_evicted_and_then_refused_with_404(pipe):
    one = Scene("a", "a", make_scene(10, 10))
    cache = SceneCache(max_bytes=2 * one.nbytes)
    for key in "abc":
        cache.add(Scene(key, key, make_scene(10, 10)))
        if key == "b":
            cache.get("a")  # a used again: b is now the oldest
    assert "a" in cache and "b" not in cache and "c" in cache and cache.evictions == 1

    with served(pipe, cache_bytes=1) as (http, client):  # room for the newest scene only
        first = client.upload_scene(SCENE_PNG)["scene_id"]
        client.upload_scene(png_bytes(make_scene(30, 20, seed=5)))
        with pytest.raises(ServeError) as gone:
            client.render(first, [[5, 5]])
        assert gone.value.status == 404 and "register it again" in gone.value.message
        assert http.get(f"/scenes/{first}").status_code == 404


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0 and percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0


# ---------------------------------------------------------------------------------- the explorer's endpoints


def events(text: str) -> list[tuple[str, Any]]:
    """The server-sent events of a stream's text, ``(event, data)``; comment-only blocks (keep-alives) skipped."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_a_streamed_render_reports_each_step_then_the_render_response(pipe):
    body = {"fixations": [[10, 10], [60, 40]], "hypotheses": 2, "seed": 5, "steps": 3}
    with served(pipe) as (http, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        streamed = http.post("/render/stream", json={"scene_id": sid, **body})
        plain = http.post("/render", json={"scene_id": sid, **body}).json()
        stats = client.metrics()
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    got = events(streamed.text)
    names = [name for name, _ in got]
    assert names == ["queued", "started", "step", "step", "step", "result"], names
    assert got[0][1] == {"ahead": 0, "steps": 3} and got[1][1] == {"requests": 1, "encoding": False}
    assert [data for name, data in got if name == "step"] == [{"step": i, "steps": 3} for i in (1, 2, 3)]
    result = got[-1][1]
    assert result["record"] == plain["record"]  # the same render: the same record and the same PNG bytes
    assert [im["png_base64"] for im in result["images"]] == [im["png_base64"] for im in plain["images"]]
    assert result["scores"] is None and stats["renders"] == 2 and stats["batches"] == 2


def test_a_streamed_render_whose_client_goes_away_is_cancelled(pipe):
    gate = Gate(pipe)
    app = create_app(gate, config(max_batch=1))
    with loopback(app) as url, MetamerGenClient(url) as client:
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        host, port = url.removeprefix("http://").split(":")
        data = json.dumps({"scene_id": sid, "fixations": [[5, 5]]}).encode()
        conn = socket.create_connection((host, int(port)))
        head = f"POST /render/stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        conn.sendall(head.encode() + data)
        assert gate.entered.acquire(timeout=120)  # inside the pipeline call
        received = b""
        conn.settimeout(60)
        while b"event: queued" not in received:  # the headers and the first event may come in separate packets
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
        conn.close()
        wait_until(lambda: client.metrics()["cancelled"] == 1)
        gate.open()
        wait_until(lambda: client.metrics()["batches"] == 1)
        stats = client.metrics()
    assert stats["interrupted_batches"] == 1 and stats["renders"] == 0


def test_a_condition_removes_a_stream_as_the_study_does(pipe):
    import torch

    with served(pipe) as (http, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        dropped = client.render(sid, [[10, 10]], seed=2, condition="peripheral")
        off = client.render(sid, [[10, 10]], seed=2, condition="foveal:off")
        both = client.render(sid, [[10, 10]], seed=2)
    assert dropped.record["condition"] == "peripheral" and "condition" not in both.record
    assert off.record["condition"] == "foveal:off" and off.record["peripheral_scale"] == 0.0
    assert dropped.record["foveal_scale"] == both.record["foveal_scale"]  # dropped keeps the scale, drops the tokens
    scene = pipe.encode_scene(SCENE)
    direct = pipe(
        scene=scene,
        fixations=[[[10, 10]]],
        num_inference_steps=STEPS,
        drop_streams=["foveal"],
        generator=[torch.Generator().manual_seed(2)],
    ).images[0]
    assert np.array_equal(np.asarray(direct), np.asarray(dropped.images()[0]))
    assert dropped.png[0] != both.png[0] != off.png[0]


def test_scores_are_the_weight_free_metrics_of_each_hypothesis_against_the_scene(pipe):
    from metamergen.evaluation.metrics import build_metrics
    from metamergen.evaluation.registry import WEIGHT_FREE_METRICS

    with served(pipe) as (http, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        body = http.post("/render", json={"scene_id": sid, "fixations": [[5, 5]], "hypotheses": 2, "scores": True})
    result = body.json()
    images = [Image.open(io.BytesIO(base64.b64decode(im["png_base64"]))).convert("RGB") for im in result["images"]]
    assert [m["name"] for m in result["scores"]] == list(WEIGHT_FREE_METRICS)
    for metric, scored in zip(build_metrics(list(WEIGHT_FREE_METRICS)), result["scores"]):
        assert scored["values"] == pytest.approx(metric([SCENE, SCENE], images).tolist(), rel=1e-12)
        assert scored["higher_is_similar"] == metric.higher_is_similar and scored["label"]


def test_the_model_view_is_foveated_input_with_the_patch_grid_and_the_fovea_outlined(pipe):
    from metamergen.encoders.view import foveated_input
    from metamergen.foveation.frame import EncoderFrame

    fixations = [[2, 2], [5, 5], [80, 50], [500, 5]]  # two in one patch; one off the image (dropped)
    with served(pipe) as (http, client):
        sid = client.upload_scene(SCENE_PNG)["scene_id"]
        both = http.post("/model-view", json={"scene_id": sid, "fixations": fixations, "peripheral_blur": 0.5})
        periphery = http.post("/model-view", json={"scene_id": sid, "fixations": fixations, "condition": "peripheral"})
        first = http.post("/model-view", json={"scene_id": sid, "fixations": fixations, "n": 1, "foveal_scale": 0})
    assert both.status_code == 200 and both.headers["content-type"] == "image/png"
    h = both.headers
    assert (h["x-canvas-size"], h["x-patch-size"], h["x-grid-size"]) == ("112", "14", "8")
    assert (h["x-patches-shown"], h["x-view"], h["x-fixations-used"], h["x-scale"]) == ("2", "both", "3", "6")
    assert (periphery.headers["x-patches-shown"], periphery.headers["x-view"]) == ("0", "peripheral")
    assert (first.headers["x-view"], first.headers["x-fixations-used"]) == ("peripheral", "1")  # λ_f = 0: no fovea
    view = Image.open(io.BytesIO(both.content)).convert("RGB")
    assert view.size == (90 * 6, 60 * 6)
    expected = foveated_input(SCENE, np.array(fixations[:3], float), 0.5, size=112, patch_size=14)
    frame = EncoderFrame.fit(90, 60, size=112, patch_size=14)
    centres = frame.patch_centers()  # image px; the grid and the outlines never cover a cell's centre
    got = np.asarray(view)[(centres[:, 1] * 6).astype(int), (centres[:, 0] * 6).astype(int)]
    want = np.asarray(expected)[centres[:, 1].astype(int), centres[:, 0].astype(int)]
    assert np.array_equal(got, want)


def test_demo_scenes_are_listed_registered_and_served_back_as_decoded(pipe, tmp_path: Path):
    from metamergen.demo.run import demo_model_info, write_demo_scenes

    with served(pipe) as (http, client):
        listed = http.get("/demo/scenes").json()["scenes"]
        chosen = listed[3]
        info = http.post("/scenes/demo", json={"name": chosen["name"]})
        again = http.post("/scenes/demo", json={"name": chosen["name"]})
        served_png = http.get(f"/scenes/{info.json()['scene_id']}/image")
        rendered = client.render(info.json()["scene_id"], chosen["viewer_fixations"][:2])
    write_demo_scenes(tmp_path, 8, demo_model_info())  # what `metamergen demo --scenes 8` writes
    on_disk = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert [s["name"] for s in listed] == on_disk and len(listed) == 8
    image = Image.open(tmp_path / "images" / chosen["name"]).convert("RGB")
    assert base64.b64decode(chosen["png_base64"]) == png_bytes(image)
    assert info.status_code == 201 and again.status_code == 200 and info.json()["scene_id"] == scene_id(image)
    assert served_png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(served_png.content))), np.asarray(image))
    assert len(chosen["viewer_fixations"]) >= 2 and rendered.record["image"] == chosen["name"]
    assert rendered.record["fixations"] == [list(map(float, p)) for p in chosen["viewer_fixations"][:2]]


def test_the_settings_the_page_fills_its_form_with(pipe):
    with served(pipe, defaults=RenderDefaults(steps=7, peripheral_blur=0.125)) as (http, _):
        settings = http.get("/settings").json()
    assert settings["defaults"]["steps"] == 7 and settings["defaults"]["peripheral_blur"] == 0.125
    assert settings["defaults"]["guidance_scale"] == 0.6  # the rule's default, resolved as the record has it
    assert settings["limits"]["max_steps"] == 200 and settings["conditions"][0] == "both"
    assert (settings["canvas_size"], settings["patch_size"], settings["grid_size"]) == (112, 14, 8)
    assert settings["blur_levels"] == [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]


def test_the_page_is_served_offline_under_a_same_origin_policy(pipe):
    import re

    with served(pipe, api_key="k" * 32) as (http, _):
        root = http.get("/", follow_redirects=False)
        page = http.get("/explorer/")  # no key needed for the page; the API behind it still wants one
        script = http.get("/explorer/explorer.js")
        assert http.get("/settings").status_code == 401
    assert root.status_code in (302, 307) and root.headers["location"] == "/explorer/"
    assert page.status_code == 200 and "<title>MetamerGen explorer</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    static = REPO / "metamergen" / "serve" / "static"
    assert sorted(p.name for p in static.iterdir()) == ["explorer.css", "explorer.js", "index.html"]
    for path in static.iterdir():  # no CDN, no web font: the only URL in the files is SVG's namespace
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)


# ---------------------------------------------------------------------------------- the command line


def test_serve_refuses_a_public_address_without_an_api_key_and_says_how(capsys, monkeypatch):
    from metamergen.commands import main

    monkeypatch.delenv("METAMERGEN_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "METAMERGEN_API_KEY" in err and "127.0.0.1" in err and err.count("\n") == 1
    assert main(["serve", "--tiny", "--model", "x"]) == 2
    assert main(["serve", "--max-batch", "0"]) == 2
    assert "max_batch must be an int >= 1" in capsys.readouterr().err


def test_serve_without_the_extra_says_which_pip_install(capsys, monkeypatch):
    import sys

    from metamergen.commands import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve"]) == 2
    assert "pip install 'metamergen[serve]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- the demo model, over a socket


def test_the_demo_model_serves_over_loopback_as_render_renders_it(tmp_path: Path, capsys):
    from metamergen.commands import main
    from metamergen.demo.run import DEMO_MODEL, default_peripheral_blur
    from metamergen.loading import load_model

    loaded = load_model(model=str(DEMO_MODEL))
    # as `metamergen serve` serves it: at the demo model's own blur, which `render` also picks
    defaults = RenderDefaults(steps=3, peripheral_blur=default_peripheral_blur(DEMO_MODEL))
    app = create_app(loaded.pipe, ServeConfig(model=loaded.description, defaults=defaults))
    image = REPO / "metamergen" / "assets" / "example_scene.png"
    with loopback(app) as url, MetamerGenClient(url) as client:
        assert client.health()["model"] == str(DEMO_MODEL)
        scene = client.upload_scene(image)
        live = client.render(scene["scene_id"], [[40, 30], [120, 90]], seed=11)
    out = tmp_path / "offline"
    argv = ["render", "--model", str(DEMO_MODEL), "--image", str(image), "--fixations", "40,30;120,90"]
    assert main([*argv, "--num-images", "1", "--seed", "11", "--steps", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    assert live.record["image"] == "example_scene.png"  # the upload's name; the command records its path
    assert json.loads((out / "render.json").read_text()) == {**live.record, "image": str(image)}
    offline = np.asarray(Image.open(out / live.names[0]))
    assert np.array_equal(offline, np.asarray(live.images()[0])) and offline.std() > 0
    assert base64.b64encode((out / live.names[0]).read_bytes()) == base64.b64encode(live.png[0])


# ---------------------------------------------------------------------------------- the example trial script


def test_the_live_trial_example_writes_a_csv_analyze_reads(pipe, tmp_path: Path, capsys, monkeypatch):
    import csv
    import importlib.util
    import sys

    from metamergen.evaluation.tables import read_table

    spec = importlib.util.spec_from_file_location("live_trial", REPO / "examples" / "live_trial.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "live_trial", example)  # its dataclasses look their module up there
    spec.loader.exec_module(example)
    scene = tmp_path / "scene.png"
    SCENE.save(scene)
    # over a socket: the script passes its window as a per-request timeout, which TestClient refuses
    with loopback(create_app(pipe, config())) as url, MetamerGenClient(url) as client:
        argv = ["--scenes", str(scene), "--out", str(tmp_path / "trials"), "--trials", "5", "--steps", "1"]
        table = example.main([*argv, "--window-s", "600"], client=client)
        stats = client.metrics()
    capsys.readouterr()
    rows = list(csv.DictReader(table.open()))
    assert [int(r["n_fixations"]) for r in rows] == [1, 2, 3, 5, 10]  # the paper's counts, in turn
    assert all(r["same"] in ("0", "1") and r["timed_out"] == "0" for r in rows)
    frame = read_table(table)  # the reader `metamergen analyze` uses
    assert {"same", "ssim", "mse", "image_id"} <= set(frame.columns) and frame["ssim"].dtype.kind == "f"
    assert frame["image_id"].is_unique and stats["renders"] == 5 and stats["cache"]["encodings"] == 1
    for row in rows:
        record = json.loads((Path(row["hypothesis"]).parent / "render.json").read_text())
        assert len(record["fixations"]) == int(row["n_fixations"]) and record["seeds"] == [int(row["seed"])]
