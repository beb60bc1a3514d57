"""The batch stage on Dask (engine/dask_run.py): a real LocalCluster of
worker processes, and a real scheduler + two workers started with the `dask`
command, give the manifest of a local run; a worker killed with SIGKILL
mid-run costs the run nothing; Ctrl-C is one line and exit 130."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from click.testing import CliRunner  # noqa: E402

from clusterimg import api  # noqa: E402
from clusterimg.cli import main  # noqa: E402
from clusterimg.engine import dask_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))

# (method, options): a hash backend in one batch and in several (merge stage),
# a keypoint backend with cached pair scores, a vector model over batches.
CASES = [
    ("phash", {}),
    ("phash", {"batch_size": 8}),
    ("orb", {"batch_size": 8}),
    ("pixels", {"cluster": "kmeans", "k": 6, "batch_size": 12}),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The 38 example photos, an exact copy of one, and a file that is no image."""
    folder = tmp_path_factory.mktemp("dask") / "photos"
    folder.mkdir()
    for f in sorted(EXAMPLES.glob("*.jpg")):
        shutil.copy(f, folder / f.name)
    shutil.copy(EXAMPLES / "bison.jpg", folder / "bison_copy.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    return folder


def comparable(manifest: dict) -> dict:
    """A manifest without what differs between any two runs (time of day, seconds)."""
    manifest = dict(manifest)
    manifest.pop("created", None)
    manifest["stats"] = {k: v for k, v in manifest["stats"].items() if k != "seconds"}
    return manifest


_local: dict = {}


def local_manifest(folder: Path, method: str, options: dict) -> dict:
    """The manifest of a local run (one process; the worker count never changes it)."""
    key = (str(folder), method, json.dumps(options, sort_keys=True))
    if key not in _local:
        _local[key] = comparable(api.cluster(folder, method, cache=False, workers=1, **options).manifest())
    return _local[key]


def local_cluster(workers: int = 2):
    """A real LocalCluster of worker processes on 127.0.0.1, and its client."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dask's default HTTP port taken by another cluster
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
    return cluster, distributed.Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def client():
    cluster, client = local_cluster()
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("method, options", CASES, ids=[f"{m}-{'-'.join(map(str, o.values()))}" for m, o in CASES])
def test_local_cluster_gives_the_local_manifest(photos, client, method, options):
    result = api.cluster(photos, method, cache=False, scheduler=client, **options)
    manifest = comparable(result.manifest())
    assert manifest == local_manifest(photos, method, options)
    assert "broken.jpg" in [s["path"] for s in manifest["skipped"]]  # a bad file is skipped, not an error
    assert any(len(c["members"]) > 1 for c in manifest["clusters"])  # something was found to compare


def test_cnn_builds_its_model_once_per_worker_process(photos, client, tmp_path):
    """The learned features run on the workers too: the ONNX model is loaded
    once per worker process (from the folder the client built it in) and
    kept for the next tasks."""
    pytest.importorskip("onnxruntime")
    few = tmp_path / "few"
    few.mkdir()
    for name in ["lemur.jpg", "lemur_bright.jpg", "lemur_crop.jpg", "bison.jpg", "koala.jpg", "duck.jpg",
                 "duck_small.jpg", "petra.jpg", "sheep.jpg"]:
        shutil.copy(photos / name, few / name)
    options = {"cluster": "graph", "batch_size": 4}
    result = api.cluster(few, "cnn", cache=False, scheduler=client, **options)
    assert comparable(result.manifest()) == local_manifest(few, "cnn", options)

    def sessions():
        from clusterimg.features import cnn

        return [key[-1] for key in cnn._EMBEDDERS]

    per_worker = client.run(sessions)
    assert sum(len(v) for v in per_worker.values()) >= 1
    assert all(len(v) <= 1 for v in per_worker.values())  # one session per process, reused by its tasks
    assert all(folder is not None for v in per_worker.values() for folder in v)  # the client's model folder


def test_one_worker_local_cluster_from_the_option(photos):
    method, options = "orb", {"batch_size": 8}
    result = api.cluster(photos, method, cache=False, scheduler="local:1", **options)
    assert comparable(result.manifest()) == local_manifest(photos, method, options)


def test_the_cache_stays_on_the_client(photos, client, tmp_path):
    """Features and pair scores come back and the client stores them: a second
    Dask run reads no image again, and a local run reuses the pair scores."""
    cache = tmp_path / "cache"
    options = {"batch_size": 8}
    first = api.cluster(photos, "orb", cache=cache, scheduler=client, **options)
    assert first.counts["features_reused"] == 0 and first.counts["features_read"] > 0
    second = api.cluster(photos, "orb", cache=cache, scheduler=client, keep_features=True, **options)
    assert second.counts["features_read"] == 1  # only broken.jpg, which has no feature to store
    assert len(second.features) == second.images  # kept features come back, an exact copy's with them
    local = api.cluster(photos, "orb", cache=cache, workers=1, **options)
    assert local.counts["features_read"] == 1
    assert local.counts["pairs_reused"] > 0 and local.counts["pairs_scored"] < first.counts["pairs_scored"]
    expected = local_manifest(photos, "orb", options)
    for result in (first, second, local):
        assert comparable(result.manifest()) == expected


class KillOnFirstStep:
    """A progress bar factory that SIGKILLs one worker process of ``client``
    when the first task of the run finishes."""

    def __init__(self, client):
        self.client, self.killed = client, None

    def __call__(self, desc):
        outer = self

        class Bar:
            def __init__(self, total):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, k):
                if outer.killed is None:
                    pids = outer.client.run(os.getpid)
                    outer.killed = pids[sorted(pids)[0]]
                    os.kill(outer.killed, signal.SIGKILL)

        return Bar


def test_a_worker_killed_mid_run_costs_nothing(photos, client):
    options = {"batch_size": 8}
    killer = KillOnFirstStep(client)
    try:
        result = api.cluster(photos, "orb", cache=False, scheduler=client, progress=killer, **options)
        assert killer.killed is not None
        with pytest.raises(ProcessLookupError):
            os.kill(killer.killed, 0)
        assert comparable(result.manifest()) == local_manifest(photos, "orb", options)
    finally:
        client.wait_for_workers(2, timeout=60)  # its nanny starts it again


# -- the command line ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask-logs")
    dask = [sys.executable, "-m", "dask"]
    procs = []
    try:
        procs.append(subprocess.Popen(dask + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                              "--no-dashboard"], env=ENV, cwd=logs, stdout=subprocess.DEVNULL,
                                      stderr=open(logs / "scheduler.log", "wb"), start_new_session=True))
        for k in range(2):
            procs.append(subprocess.Popen(dask + ["worker", address, "--nworkers", "1", "--nthreads", "1",
                                                  "--no-dashboard", "--host", "127.0.0.1"],
                                          env=ENV, cwd=logs, stdout=subprocess.DEVNULL,
                                          stderr=open(logs / f"worker{k}.log", "wb"), start_new_session=True))
        with distributed.Client(address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:  # each command in its own process group: a worker's nanny and its worker process go together
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clusterimg", "run", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


ORB = ("--method", "orb", "--batch-size", "8", "--no-cache", "--transfer", "none", "--json", "--quiet")


def test_cli_on_a_command_line_scheduler(photos, scheduler):
    run = cli(photos, "--scheduler", scheduler, *ORB)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err.decode()
    assert comparable(json.loads(out)) == local_manifest(photos, "orb", {"batch_size": 8})


def wait_for_task(client, prefix: str, state: str, timeout: float = 60) -> None:
    """Until a task of this run whose key starts with ``prefix`` is in ``state``."""
    def count(dask_scheduler, prefix=prefix, state=state):
        return sum(1 for key, ts in dask_scheduler.tasks.items() if str(key).startswith(prefix) and ts.state == state)

    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(count) == 0:
        assert time.monotonic() < deadline, f"no {prefix} task reached {state}"
        time.sleep(0.01)


def test_cli_survives_a_worker_killed_mid_run(photos, scheduler):
    with distributed.Client(scheduler, set_as_default=False) as client:
        run = cli(photos, "--scheduler", scheduler, *ORB)
        try:
            wait_for_task(client, "clusterimg-extract-", "memory")
            assert run.poll() is None  # the run is still going
            pids = client.run(os.getpid)
            victim = pids[sorted(pids)[0]]
            os.kill(victim, signal.SIGKILL)
            out, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, err.decode()
        assert comparable(json.loads(out)) == local_manifest(photos, "orb", {"batch_size": 8})
        client.wait_for_workers(2, timeout=60)  # the nanny starts it again, for the tests after this one


def test_ctrl_c_cancels_the_tasks_and_exits_130(photos, scheduler):
    with distributed.Client(scheduler, set_as_default=False) as client:
        run = cli(photos, "--scheduler", scheduler, *ORB)
        try:
            wait_for_task(client, "clusterimg-extract-", "memory")
            run.send_signal(signal.SIGINT)
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 130
        lines = [line for line in err.decode().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Interrupted"), err.decode()

        def left(dask_scheduler):
            return [str(k) for k in dask_scheduler.tasks if str(k).startswith("clusterimg-")]

        deadline = time.monotonic() + 10
        while client.run_on_scheduler(left) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.run_on_scheduler(left) == []  # nothing of the run is left on the cluster


# -- refusals --------------------------------------------------------------------------


def test_no_dask_installed_is_one_line_and_exit_2(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(photos), "--scheduler", "local:2", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --scheduler needs Dask: pip install 'clusterimg[dask]' (dask and distributed)"]
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("address, message", [
    ("tcp://127.0.0.1:{port}", "Error: cannot reach the Dask scheduler at tcp://127.0.0.1:"),
    ("tcp://127.0.0.1:notaport", "Error: --scheduler: 'tcp://127.0.0.1:notaport' is not a scheduler address"),
    ("local:0", "Error: --scheduler local:N needs a number of workers of 1 or more"),
])
def test_bad_scheduler_is_one_line_and_exit_2(photos, tmp_path, monkeypatch, address, message):
    monkeypatch.setattr(dask_run, "CONNECT_TIMEOUT", 1)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(photos), "--scheduler", address.format(port=free_port()),
                                       "--out", str(out), "--no-cache", "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output


def test_parse_scheduler():
    assert dask_run.parse_scheduler("local:3") == ("local", 3)
    assert dask_run.parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    assert dask_run.parse_scheduler("scheduler:8786") == ("address", "tcp://scheduler:8786")
    assert dask_run.parse_scheduler("tls://sched.example.org:8786") == ("address", "tls://sched.example.org:8786")


def test_fit_on_a_local_cluster_saves_the_model_of_a_local_fit(photos, tmp_path):
    from clusterimg.model import load

    paths = {}
    for name, extra in (("here", []), ("dask", ["--scheduler", "local:1"])):
        paths[name] = tmp_path / f"{name}.cim"
        done = CliRunner().invoke(main, ["fit", str(photos), "--method", "orb", "--save", str(paths[name]),
                                         "--no-cache", "-q", "-j", "1", *extra])
        assert done.exit_code == 0, done.output
    here, dask = load(paths["here"]), load(paths["dask"])
    assert [c.members for c in dask.clusters] == [c.members for c in here.clusters]
    assert any(len(c.members) > 1 for c in here.clusters)
