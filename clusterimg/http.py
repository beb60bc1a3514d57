"""The inference API: a Starlette (ASGI) app over a loaded cluster model.

``POST /api/extraction`` follows the custom-skill contract of Azure
Cognitive Search::

    {"values": [{"recordId": "0", "data": {"images": "<base64 of an image file>"}}, ...]}
    -> {"values": [{"recordId": "0", "data": {"label": [...], "cluster": 3, "score": 0.91},
                    "errors": "", "warnings": ""}, ...]}

Records are answered in the order given. A record whose image is not valid
base64, is empty, is not an image, is too large (bytes or pixels) gets its
own error (``"errors": [{"message": ...}]``, ``"data": {}``) and the other
records are still answered. The server never fetches anything (no
``data.url``).

Before anything is read, the key is checked: header
``Ocp-Apim-Subscription-Key: KEY`` or ``Authorization: Bearer KEY``,
compared in constant time. Missing or wrong: 401 and nothing processed.
Limits: request body (``max_body_bytes``: 413, checked from
Content-Length and while reading), records per request (``max_records``:
413), bytes per image (``max_record_bytes``: a per-record error), pixels
per image (``max_pixels``: a per-record error, read from the header before
decoding), and a request timeout (``timeout_s``: 504). Malformed JSON or a
body without a ``values`` list: 400.

``GET /health``: ``{"status": "ok"}`` without a key, for probes. Each
request writes one JSON line on stderr (time, client, method, path, status,
ms, bytes, records, errors); ``debug`` adds each failed record's message.

Starlette and uvicorn are imported here only, so the rest of clusterimg
never pays for them. With several uvicorn workers each worker process
builds the app through :func:`app_from_env` and loads the model once.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from clusterimg.errors import ClusterimgError, ImageReadError

ENV_SETTINGS = "CLUSTERIMG_SERVE"  # JSON: model path, limits, debug, no_key (set by `clusterimg serve`)
ENV_SERVER_KEY = "CLUSTERIMG_SERVE_KEY"  # the key handed to worker processes
ENV_KEY = "KEY"  # the key a user sets


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 << 20  # one request body
    max_record_bytes: int = 8 << 20  # one decoded image file
    max_records: int = 100  # records per request
    max_pixels: int = 50_000_000  # one image, from its header
    timeout_s: float = 60.0  # one request's processing


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error_response(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def check_key(headers, key: str | None) -> bool:
    """Whether the request carries ``key`` (always True when no key is configured)."""
    if key is None:
        return True
    given = headers.get("ocp-apim-subscription-key")
    if given is None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass"))


def decode_record_image(value: Any, limits: Limits) -> bytes:
    """The image bytes of one record's ``data.images`` (ImageReadError with the reason)."""
    if not isinstance(value, str):
        raise ImageReadError("data.images must be a base64 string")
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a data URI: data:image/png;base64,....
        text = text.split(",", 1)[1]
    if len(text) // 4 * 3 > limits.max_record_bytes + 3:
        raise ImageReadError(f"image larger than the limit of {limits.max_record_bytes:,} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageReadError("data.images is not valid base64")
    if len(data) > limits.max_record_bytes:
        raise ImageReadError(f"image larger than the limit of {limits.max_record_bytes:,} bytes")
    return data


class Service:
    """The model and what a request needs; used from a worker thread."""

    def __init__(self, model, limits: Limits):
        self.model = model
        self.limits = limits
        # Decoding runs in parallel threads; the model runs one request at a
        # time per process: it uses the cores itself, and concurrent runs of
        # a CNN would each hold their own working memory.
        self.model_lock = threading.Lock()

    def warm_up(self) -> None:
        """Decode and assign one small image, so that the backend's model
        (a CNN session) is built before the first request, not during it."""
        from PIL import Image

        from clusterimg.images import image_bytes

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 130, 140)).save(buf, "PNG")
        backend = self.model.backend
        self.model.assign_features(backend.extract_many([backend.decode(image_bytes(buf.getvalue()))]))
        Image.init()  # every image plugin, which Pillow loads on the first file it cannot identify

    def answer(self, records: list) -> tuple[list[dict], list[str]]:
        """The answers of ``records`` in order, and the error messages."""
        from clusterimg.images import image_bytes

        backend = self.model.backend
        answers: list[dict] = []
        images, where, failures = [], [], []
        for record in records:
            rid = record.get("recordId") if isinstance(record, dict) else None
            answer = {"recordId": rid, "data": {}, "errors": "", "warnings": ""}
            answers.append(answer)
            try:
                if not isinstance(record, dict):
                    raise ImageReadError("a record must be an object with recordId and data")
                if rid is None:
                    raise ImageReadError("the record has no recordId")
                data = record.get("data")
                if not isinstance(data, dict) or "images" not in data:
                    raise ImageReadError("the record has no data.images")
                raw = decode_record_image(data["images"], self.limits)
                images.append(backend.decode(image_bytes(raw, self.limits.max_pixels)))
                where.append(len(answers) - 1)
            except ImageReadError as e:
                answer["errors"] = [{"message": str(e)}]
                failures.append(str(e))
        if images:
            with self.model_lock:
                assigned = self.model.assign_features(backend.extract_many(images))
            for pos, (cid, score) in zip(where, assigned):
                answers[pos]["data"] = {"label": list(self.model.labels.get(cid, [])), "cluster": cid,
                                        "score": round(score, 4)}
        return answers, failures


def create_app(model, *, key: str | None, limits: Limits = Limits(), debug: bool = False):
    """The ASGI app over ``model`` (a ClusterModel or a model file path).
    ``key`` None means no key is asked for (``--no-key``)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if isinstance(model, (str, os.PathLike)):
        from clusterimg.model import load

        model = load(model)
    if key is not None and not key:
        raise ClusterimgError("the key is empty", exit_code=2)
    service = Service(model, limits)
    service.warm_up()

    async def read_body(request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > limits.max_body_bytes:
                    raise _Refused(413, f"request body larger than {limits.max_body_bytes:,} bytes")
            except ValueError:
                raise _Refused(400, "bad Content-Length")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise _Refused(413, f"request body larger than {limits.max_body_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def extraction(request):
        state = request.scope.setdefault("state", {})
        if not check_key(request.headers, key):
            return _error_response(401, "missing or wrong key (header Ocp-Apim-Subscription-Key or "
                                        "Authorization: Bearer)")
        try:
            body = await read_body(request)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _Refused(400, "the body is not valid JSON")
            if not isinstance(payload, dict) or not isinstance(payload.get("values"), list):
                raise _Refused(400, 'the body must be an object {"values": [records]}')
            records = payload["values"]
            if len(records) > limits.max_records:
                raise _Refused(413, f"more than {limits.max_records} records in one request")
        except _Refused as e:
            return _error_response(e.status, str(e))
        state["records"] = len(records)
        try:
            answers, failures = await asyncio.wait_for(run_in_threadpool(service.answer, records),
                                                       timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            return _error_response(504, f"the request took longer than {limits.timeout_s:g} s")
        state["errors"] = failures
        return JSONResponse({"values": answers})

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/api/extraction", extraction, methods=["POST"]),
                            Route("/health", health, methods=["GET"])])
    app.state.model = model
    return AccessLog(app, debug)


class AccessLog:
    """ASGI middleware: one JSON line per request on stderr."""

    def __init__(self, app, debug: bool = False):
        self.app = app
        self.debug = debug

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        seen = {"status": 500, "bytes": 0}
        scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state", {})
            client = scope.get("client") or ("-", 0)
            line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "client": client[0],
                    "method": scope.get("method"), "path": scope.get("path"), "status": seen["status"],
                    "ms": round((time.perf_counter() - started) * 1000, 1), "bytes": seen["bytes"]}
            if "records" in state:
                line["records"] = state["records"]
                line["errors"] = len(state.get("errors", []))
            if self.debug and state.get("errors"):
                line["error_messages"] = state["errors"]
            print(json.dumps(line), file=sys.stderr, flush=True)


def app_from_env():
    """The app of one worker process, configured by `clusterimg serve`
    through the environment (uvicorn's factory)."""
    settings = json.loads(os.environ[ENV_SETTINGS])
    key = None if settings.get("no_key") else (os.environ.get(ENV_SERVER_KEY) or os.environ.get(ENV_KEY))
    if key is None and not settings.get("no_key"):
        raise ClusterimgError("no key configured", exit_code=2)
    return create_app(settings["model"], key=key, limits=Limits(**settings.get("limits", {})),
                      debug=bool(settings.get("debug")))


def serve(model_path: str, *, host: str, port: int, key: str | None, workers: int = 1, debug: bool = False,
          limits: Limits = Limits()) -> None:
    """Run uvicorn with ``workers`` processes, each loading the model once."""
    import uvicorn

    os.environ[ENV_SETTINGS] = json.dumps({"model": str(model_path), "limits": asdict(limits), "debug": debug,
                                           "no_key": key is None})
    if key is not None:
        os.environ[ENV_SERVER_KEY] = key
    uvicorn.run("clusterimg.http:app_from_env", factory=True, host=host, port=port, workers=workers,
                access_log=False, log_level="debug" if debug else "warning", timeout_keep_alive=5)
