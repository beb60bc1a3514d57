"""Load test of `clusterimg serve` on loopback.

Fits a model on a folder (default: examples/), starts a real server process
on a free 127.0.0.1 port, then for each batch size (1 and 10 images per
request) runs N concurrent clients for a bounded time and reports
requests/s, images/s, p50/p99 latency, errors and the server's RSS before and
after. Finally sends malformed or unauthorised requests mixed with good ones
and checks that none is answered with a 5xx and none is processed (wrong
key: 401; broken bodies: 400/413; the good ones still right).

    python3 benchmarks/serve_load.py --clients 8 --seconds 20
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clusterimg.model import fit  # noqa: E402

KEY = "load-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """RSS of the server process and its children (uvicorn workers)."""
    total = rss_mb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_rss_mb(int(c)) for c in children)


def body_of(images: list[bytes], start: int, n: int) -> bytes:
    values = [{"recordId": str(k), "data": {"images": base64.b64encode(images[(start + k) % len(images)]).decode()}}
              for k in range(n)]
    return json.dumps({"values": values}).encode()


def load_phase(url: str, bodies: list[bytes], clients: int, seconds: float, per_request: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        with httpx.Client(timeout=60, headers={"Ocp-Apim-Subscription-Key": KEY}) as http:
            k = c
            while time.monotonic() < stop:
                body = bodies[k % len(bodies)]
                k += clients
                t = time.perf_counter()
                try:
                    r = http.post(url + "/api/extraction", content=body,
                                  headers={"Content-Type": "application/json"})
                    ok = r.status_code == 200 and all(v["errors"] == "" for v in r.json()["values"])
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    errors[0] += not ok

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    lat = sorted(latencies)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return {"requests": len(lat), "rps": len(lat) / wall, "ips": len(lat) * per_request / wall,
            "p50": pick(0.50), "p99": pick(0.99), "errors": errors[0], "wall": wall}


def abuse_phase(url: str, good: bytes, count: int, seed: int = 0) -> dict:
    """``count`` bad requests (wrong/missing key, broken JSON, oversized,
    wrong shapes) mixed with good ones. Bad requests must get 4xx; requests
    with a wrong key must be refused before any processing, which the
    server's access log shows (no "records" field for them)."""
    rng = random.Random(seed)
    kinds = ["no_key", "wrong_key", "bearer_wrong", "bad_json", "not_object", "no_values", "too_big", "too_many",
             "empty"]
    statuses: dict[str, dict[int, int]] = {}
    good_ok = good_total = five_xx = 0
    with httpx.Client(timeout=60) as http:
        for k in range(count):
            kind = rng.choice(kinds)
            headers = {"Ocp-Apim-Subscription-Key": KEY}
            body = good
            if kind == "no_key":
                headers = {}
            elif kind == "wrong_key":
                headers = {"Ocp-Apim-Subscription-Key": KEY[:-1] + "X"}
            elif kind == "bearer_wrong":
                headers = {"Authorization": "Bearer " + KEY + "X"}
            elif kind == "bad_json":
                body = good[: rng.randrange(1, len(good) - 1)]
            elif kind == "not_object":
                body = b"[1, 2, 3]"
            elif kind == "no_values":
                body = b'{"records": []}'
            elif kind == "too_big":
                body = b'{"values": ["' + b"A" * (5 << 20) + b'"]}'
            elif kind == "too_many":
                body = json.dumps({"values": [{"recordId": str(i), "data": {"images": "AA=="}}
                                              for i in range(101)]}).encode()
            elif kind == "empty":
                body = b""
            try:
                status = http.post(url + "/api/extraction", content=body, headers=headers).status_code
            except httpx.TransportError:
                status = 0  # the connection was dropped (counted, and shown as 0)
            statuses.setdefault(kind, {}).setdefault(status, 0)
            statuses[kind][status] += 1
            five_xx += status >= 500
            if k % 10 == 0:  # a good request in between still works
                g = http.post(url + "/api/extraction", content=good, headers={"Ocp-Apim-Subscription-Key": KEY})
                good_total += 1
                good_ok += g.status_code == 200 and all(v["errors"] == "" for v in g.json()["values"])
    return {"statuses": statuses, "five_xx": five_xx, "good_ok": good_ok, "good_total": good_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=ROOT / "examples")
    ap.add_argument("--method", default="phash")
    ap.add_argument("--cluster", default=None, help="clustering model of the fit (default: the method's)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--abuse", type=int, default=1000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    model = fit(args.train, args.method, cluster=args.cluster, cache=False)
    path = model.save(tmp / "model.cim")
    images = [p.read_bytes() for p in sorted(args.train.glob("*.jpg"))]
    print(f"model: {args.method} on {args.train} ({len(model.clusters)} clusters); {len(images)} request images "
          f"of {sum(map(len, images)) / len(images) / 1024:.0f} KB on average; {args.clients} clients, "
          f"{args.seconds:g} s per phase, {args.workers} server worker(s), {os.cpu_count()} CPUs")
    port = free_port()
    log = open(tmp / "server.log", "w+")
    env = dict(os.environ, KEY=KEY, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "clusterimg", "serve", str(path), "--port", str(port),
                             "--workers", str(args.workers), "--max-body-mb", "4"], env=env, stdout=log, stderr=log, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        httpx.post(url + "/api/extraction", content=body_of(images, 0, 1),
                   headers={"Ocp-Apim-Subscription-Key": KEY}, timeout=60)  # warm up
        print(f"server RSS after start: {tree_rss_mb(proc.pid):.0f} MB")
        for per_request in (1, 10):
            bodies = [body_of(images, s, per_request) for s in range(len(images))]
            before = tree_rss_mb(proc.pid)
            r = load_phase(url, bodies, args.clients, args.seconds, per_request)
            after = tree_rss_mb(proc.pid)
            print(f"{per_request:>2} image(s)/request: {r['requests']} requests in {r['wall']:.1f} s: "
                  f"{r['rps']:.1f} requests/s, {r['ips']:.1f} images/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
                  f"errors {r['errors']}; server RSS {before:.0f} -> {after:.0f} MB")
        log.seek(0, os.SEEK_END)
        mark = log.tell()
        before = tree_rss_mb(proc.pid)
        a = abuse_phase(url, body_of(images, 0, 1), args.abuse)
        after = tree_rss_mb(proc.pid)
        log.seek(mark)
        lines = [json.loads(x) for x in log.read().splitlines() if x.startswith("{")]
        refused = [x for x in lines if x.get("status") in (400, 401, 413)]
        processed = [x for x in refused if "records" in x]
        print(f"abuse: {args.abuse} bad requests: " + ", ".join(
            f"{kind} {dict(sorted(s.items()))}" for kind, s in sorted(a["statuses"].items())))
        print(f"abuse: 5xx answers {a['five_xx']}; refused requests that reached processing {len(processed)}; "
              f"good requests in between answered right {a['good_ok']}/{a['good_total']}; "
              f"server RSS {before:.0f} -> {after:.0f} MB")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    main()
