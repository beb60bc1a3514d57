"""The HTTP API, tested against a real server process on a loopback port."""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from clusterimg.cli import main
from clusterimg.model import fit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KEY = "test-key-123"
TRAIN = ["crab.jpg", "crab_gray.jpg", "duck.jpg", "duck_small.jpg", "lemur.jpg", "lemur_bright.jpg", "italy.jpg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    for name in TRAIN:
        (folder / name).write_bytes((EXAMPLES / name).read_bytes())
    model = fit(folder, "phash", cache=False, workers=1)
    labels = {}
    for c in model.clusters:
        labels[c.id] = [c.members[0].split("_")[0].split(".")[0], "animal"]
    model.set_labels(labels)
    return model.save(folder.parent / "model.cim")


@pytest.fixture(scope="module")
def server(model_file):
    port = free_port()
    env = dict(os.environ, KEY=KEY, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterimg", "serve", str(model_file), "--port", str(port), "--max-body-mb", "1",
         "--max-records", "20", "--max-pixels", "20000000", "--debug"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    proc.stderr.close()


def post(url, body, key=KEY, header="Ocp-Apim-Subscription-Key", **kw):
    headers = {}
    if key is not None:
        headers[header] = key if header != "Authorization" else f"Bearer {key}"
    if not isinstance(body, dict):
        return httpx.post(url + "/api/extraction", content=body, headers=headers, timeout=30, **kw)
    return httpx.post(url + "/api/extraction", json=body, headers=headers, timeout=30, **kw)


def record(rid, data: bytes | str) -> dict:
    return {"recordId": rid, "data": {"images": data if isinstance(data, str) else b64(data)}}


def test_a_good_request_gets_the_labels_in_order(server):
    body = {"values": [record("a", (EXAMPLES / "duck.jpg").read_bytes()),
                       record("b", (EXAMPLES / "crab_gray.jpg").read_bytes()),
                       record("c", (EXAMPLES / "koala.jpg").read_bytes())]}
    for header in ("Ocp-Apim-Subscription-Key", "Authorization"):
        r = post(server, body, header=header)
        assert r.status_code == 200
        values = r.json()["values"]
        assert [v["recordId"] for v in values] == ["a", "b", "c"]
        assert values[0]["data"]["label"] == ["duck", "animal"] and values[0]["errors"] == ""
        assert values[1]["data"]["label"] == ["crab", "animal"]
        assert values[2]["data"] == {"label": [], "cluster": -1, "score": values[2]["data"]["score"]}


@pytest.mark.parametrize("key, header", [(None, None), ("wrong", "Ocp-Apim-Subscription-Key"),
                                         ("wrong", "Authorization"), (KEY + "x", "Ocp-Apim-Subscription-Key")])
def test_a_missing_or_wrong_key_is_401(server, key, header):
    r = post(server, {"values": [record("0", (EXAMPLES / "duck.jpg").read_bytes())]}, key=key,
             header=header or "Ocp-Apim-Subscription-Key")
    assert r.status_code == 401 and "values" not in r.json()
    assert post(server, b"{not json", key=key).status_code == 401  # nothing is read before the key


def test_bad_records_get_their_own_errors_and_the_others_are_answered(server):
    good = (EXAMPLES / "lemur.jpg").read_bytes()
    body = {"values": [
        record("bad64", "this is *not* base64!"),
        record("ok1", good),
        record("text", b"just some text, not an image"),
        record("empty", b""),
        record("bomb", png_header_only(100_000, 100_000)),
        record("big", png_header_only(5000, 5000)),  # 25 MP: over this server's --max-pixels
        {"recordId": "nodata"},
        record("ok2", good),
    ]}
    r = post(server, body)
    assert r.status_code == 200
    values = r.json()["values"]
    assert [v["recordId"] for v in values] == ["bad64", "ok1", "text", "empty", "bomb", "big", "nodata", "ok2"]
    errors = {v["recordId"]: v["errors"][0]["message"] for v in values if v["errors"]}
    assert set(errors) == {"bad64", "text", "empty", "bomb", "big", "nodata"}
    assert "base64" in errors["bad64"] and "identify" in errors["text"] and "empty" in errors["empty"]
    assert "too large" in errors["bomb"] and "too large" in errors["big"]
    for v in values:
        if v["recordId"].startswith("ok"):
            assert v["data"]["label"] == ["lemur", "animal"] and v["errors"] == ""
        else:
            assert v["data"] == {}


def test_limits_and_malformed_bodies(server):
    big = {"values": [record("0", os.urandom(1_200_000))]}  # over --max-body-mb 1 once encoded
    assert post(server, big).status_code == 413
    chunks = iter([json.dumps(big).encode()[k:k + 65536] for k in range(0, 1_700_000, 65536)])
    streamed = post(server, chunks)  # no Content-Length: the cap is checked while reading
    assert streamed.status_code == 413 and "Content-Length" not in streamed.request.headers
    too_many = {"values": [record(str(k), b"x") for k in range(21)]}
    assert post(server, too_many).status_code == 413
    for body in (b"{not json", b"", b"[1, 2]", b'{"values": 3}', "\udcff".encode("utf-8", "surrogatepass")):
        r = post(server, body)
        assert r.status_code == 400, body
        assert "error" in r.json()
    assert httpx.get(server + "/api/extraction").status_code == 405
    assert httpx.get(server + "/health").json() == {"status": "ok"}


def test_concurrent_requests_are_all_answered(server):
    images = [(EXAMPLES / n).read_bytes() for n in ("duck_small.jpg", "crab.jpg", "lemur_bright.jpg")]
    expected = [["duck", "animal"], ["crab", "animal"], ["lemur", "animal"]]

    def one(k):
        r = post(server, {"values": [record(str(k), images[k % 3])]})
        return r.status_code, r.json()["values"][0]["data"]["label"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    assert answers == [(200, expected[k % 3]) for k in range(24)]


def test_the_server_refuses_to_start_without_a_key(model_file, monkeypatch):
    monkeypatch.delenv("KEY", raising=False)
    done = CliRunner().invoke(main, ["serve", str(model_file)])
    assert done.exit_code == 2 and "no key" in done.output
    done = CliRunner().invoke(main, ["serve", str(model_file.parent / "missing.cim"), "--no-key"])
    assert done.exit_code == 2 and "not found" in done.output
