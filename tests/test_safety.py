"""Data safety (issue 9): clusterimg never loses, truncates or overwrites a
user's file, never touches anything outside its input and output folders,
and trusts nothing it finds in the output folder."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clusterimg import cache as cache_mod
from clusterimg import cli, output
from clusterimg.api import DEFAULT_METHOD
from clusterimg.cli import main
from clusterimg.errors import ClusterimgError
from clusterimg.features import get_method
from clusterimg.images import OUTPUT_FOLDER_REASON, discover
from clusterimg.output import LOCK, MANIFEST, PENDING, check_paths, default_out, dumps_json
from conftest import make_photo, write_photo

REPO = Path(__file__).resolve().parents[1]


def invoke(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def images_in(folder: Path) -> list[bytes]:
    """Contents of every image file (not links) under ``folder``, sorted."""
    return sorted(p.read_bytes() for p in folder.rglob("*")
                  if p.suffix in (".jpg", ".png") and p.is_file() and not p.is_symlink())


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# -- D1: --out equal to, inside or around an input ------------------------------------


def test_overwrite_never_deletes_the_input_when_the_input_is_an_earlier_output(photo_folder, tmp_path):
    out = tmp_path / "out"
    assert invoke("run", photo_folder, "--out", out, "-q").exit_code == 0
    copies = images_in(out)
    assert len(copies) == 11
    for args in (["run", out, "--out", out, "--overwrite"],
                 ["run", out / "cluster_0001", "--out", out, "--overwrite"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        no_traceback(result)
        assert images_in(out) == copies  # before the fix: 0 left


@pytest.mark.parametrize("where", ["is", "is inside", "contains"])
def test_check_paths_refuses_an_out_overlapping_any_input(tmp_path, where):
    other, photos = tmp_path / "other", tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    other.mkdir()
    out = {"is": photos, "is inside": photos / "sub", "contains": tmp_path}[where]
    before = tree(tmp_path)
    with pytest.raises(ClusterimgError, match=where) as info:
        check_paths([other, photos], out, overwrite=True, resume=False)
    assert info.value.exit_code == 2
    assert tree(tmp_path) == before and not (out / LOCK).exists()


def test_an_out_reached_through_a_symlink_is_resolved(photo_folder, tmp_path):
    link = tmp_path / "looks_elsewhere"
    link.symlink_to(photo_folder)
    result = invoke("run", photo_folder, "--out", link / "sorted")
    assert result.exit_code == 2 and "is inside the input folder" in result.output
    assert not (photo_folder / "sorted").exists()


# -- D2: nothing found in --out is trusted ----------------------------------------------


def plant_journal(out: Path, secret: Path) -> None:
    """The journal of the issue: its own absolute input and an output outside --out."""
    out.mkdir()
    (out / PENDING).write_text(json.dumps({
        "clusterimg": "0.1.0", "method": "phash", "threshold": 0.8, "params": {}, "input": "x", "transfer": "move",
        "created": "x", "clusters": [], "outliers": [{"path": "passwords.txt", "output": "../stolen.txt"}],
        "skipped": [], "stats": {"images": 1, "skipped": 0, "clusters": 0, "outliers": 1},
        "input_abs": str(secret)}))


@pytest.mark.parametrize("flag", [None, "--resume", "--overwrite"])
def test_a_planted_journal_moves_nothing(photo_folder, tmp_path, flag):
    secret, out = tmp_path / "secret", tmp_path / "out"
    secret.mkdir()
    (secret / "passwords.txt").write_text("secret data")
    plant_journal(out, secret)
    result = invoke("run", photo_folder, "--out", out, *([flag] if flag else []))
    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert (secret / "passwords.txt").read_text() == "secret data"
    assert not (tmp_path / "stolen.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == [PENDING]


@pytest.mark.parametrize("entry, message", [
    ({"path": "passwords.txt", "output": "outliers/p.txt"}, "another input"),  # the journal's own input
    ({"path": "../secret/passwords.txt", "output": "outliers/p.txt"}, "not a path inside"),
    ({"path": "single_0.jpg", "output": "/tmp/elsewhere.jpg"}, "not a path inside"),
])
def test_journal_paths_must_stay_inside_their_folders(photo_folder, tmp_path, entry, message):
    secret, out = tmp_path / "secret", tmp_path / "out"
    secret.mkdir()
    (secret / "passwords.txt").write_text("secret data")
    out.mkdir()
    job = {"clusterimg": "0.1.0", "method": "phash", "threshold": 0.8, "params": {}, "input": "x",
           "transfer": "move", "clusters": [], "outliers": [entry], "skipped": [], "stats": {},
           "input_abs": str(secret if message == "another input" else photo_folder)}
    (out / PENDING).write_text(json.dumps(job))
    before = tree(tmp_path)
    result = invoke("run", photo_folder, "--out", out, "--transfer", "move")
    assert result.exit_code == 2 and message in result.output, result.output
    assert tree(tmp_path) == before


def test_a_planted_manifest_cannot_make_overwrite_delete_outside_out(photo_folder, tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim2"
    victim.mkdir()
    (victim / "thesis.docx").write_text("four years of work")
    assert invoke("run", photo_folder, "--out", out, "-q").exit_code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["outliers"][0]["output"] = "../victim2/thesis.docx"
    (out / MANIFEST).write_text(json.dumps(manifest))
    before = tree(tmp_path)
    result = invoke("run", photo_folder, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "not a path inside" in result.output
    no_traceback(result)
    assert tree(tmp_path) == before  # before the fix: thesis.docx deleted


def test_overwrite_checks_everything_before_deleting_anything(photo_folder, tmp_path):
    out = tmp_path / "out"
    assert invoke("run", photo_folder, "--out", out, "-q").exit_code == 0
    (out / "keep.txt").write_text("mine")
    before = tree(out)
    result = invoke("run", photo_folder, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "keep.txt" in result.output
    assert tree(out) == before  # before the fix: the old output was gone, keep.txt left: stuck
    (out / "keep.txt").unlink()
    assert invoke("run", photo_folder, "--out", out, "--overwrite", "-q").exit_code == 0


def test_overwrite_keeps_an_edited_output_file_and_the_last_copy_of_an_image(photo_folder, tmp_path):
    out = tmp_path / "out"
    assert invoke("run", photo_folder, "--out", out, "-q").exit_code == 0
    edited = out / "outliers" / "single_0.jpg"
    edited.write_bytes(edited.read_bytes() + b"edited by the user")
    result = invoke("run", photo_folder, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "outliers/single_0.jpg" in result.output
    assert edited.read_bytes().endswith(b"edited by the user")
    # the originals are gone: the copies in out are the only ones left
    edited.unlink()
    (photo_folder / "a" / "one.jpg").unlink()
    other = tmp_path / "other"
    write_photo(other / "new.jpg", make_photo(7))
    before = tree(out)
    result = invoke("run", other, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "only copy" in result.output
    assert tree(out) == before


def interrupted_copy(photo_folder: Path, out: Path, monkeypatch, mode: str = "copy") -> None:
    real, calls = output.transfer_file, []

    def stop_on_fourth(*args):
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(output, "transfer_file", stop_on_fourth)
    killed = invoke("run", photo_folder, "--out", out, "--transfer", mode)
    monkeypatch.setattr(output, "transfer_file", real)
    assert killed.exit_code == 130 and "finish the transfer" in killed.output
    assert (out / PENDING).exists()


def test_a_journal_with_other_options_needs_resume_or_overwrite(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupted_copy(photo_folder, out, monkeypatch)
    before = tree(out)
    other = invoke("run", photo_folder, "--out", out, "--threshold", "0.9")
    assert other.exit_code == 2 and "other options" in other.output and "threshold" in other.output
    assert tree(out) == before
    resumed = invoke("run", photo_folder, "--out", out, "--threshold", "0.9", "--resume")
    assert resumed.exit_code == 0 and "Finishing the interrupted run" in resumed.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["threshold"] == get_method(DEFAULT_METHOD).default_threshold and not (out / PENDING).exists()


def test_overwrite_discards_a_copy_journal_without_replaying_it(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupted_copy(photo_folder, out, monkeypatch)
    result = invoke("run", photo_folder, "--out", out, "--threshold", "0.9", "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((out / MANIFEST).read_text())["threshold"] == 0.9
    assert not (out / PENDING).exists()


def test_overwrite_never_discards_an_interrupted_move(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    everything = images_in(photo_folder)
    interrupted_copy(photo_folder, out, monkeypatch, mode="move")
    result = invoke("run", photo_folder, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "moved there" in result.output
    assert sorted(images_in(photo_folder) + images_in(out)) == everything


def test_a_journal_without_stats_seconds_is_finished_without_a_traceback(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupted_copy(photo_folder, out, monkeypatch)
    job = json.loads((out / PENDING).read_text())
    del job["stats"]["seconds"]
    (out / PENDING).write_text(json.dumps(job))
    result = invoke("run", photo_folder, "--out", out)
    assert result.exit_code == 0, result.output
    no_traceback(result)
    assert "11 images read" in result.output


def test_resume_without_a_journal_is_refused(photo_folder, tmp_path):
    result = invoke("run", photo_folder, "--out", tmp_path / "out", "--resume")
    assert result.exit_code == 2 and "nothing to resume" in result.output


# -- D3: names that are not UTF-8 --------------------------------------------------------


@pytest.mark.parametrize("cache_flag", ["--cache", "--no-cache"])
def test_a_name_that_is_not_utf8_is_clustered_like_any_other(photo_folder, tmp_path, cache_flag):
    odd = os.fsencode(photo_folder / "c") + b"/x\xff.jpg"
    with open(odd, "wb") as f:  # a copy of three.jpg under a name from an old Samba share
        f.write((photo_folder / "c" / "three.jpg").read_bytes())
    out = tmp_path / "out"
    args = ["run", photo_folder, "--out", out] + ([] if cache_flag == "--cache" else ["--no-cache"])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    no_traceback(result)
    text = (out / MANIFEST).read_bytes()
    text.decode("utf-8")  # the manifest is valid UTF-8 ...
    assert b"x\\udcff.jpg" in text  # ... carrying the byte as a surrogate escape
    manifest = json.loads(text)
    (cluster,) = [c for c in manifest["clusters"] if any("three" in m["path"] for m in c["members"])]
    member = next(m for m in cluster["members"] if m["path"].startswith("c/x"))
    assert os.fsencode(member["path"]) == b"c/x\xff.jpg"
    assert os.fsencode(out / member["output"]).endswith(b"/x\xff.jpg")
    assert (out / member["output"]).read_bytes() == open(odd, "rb").read()


def test_cache_file_key_takes_bytes_names(tmp_path):
    odd = os.fsencode(tmp_path) + b"/x\xff.jpg"
    with open(odd, "wb") as f:
        f.write(b"data")
    assert isinstance(cache_mod.file_key(os.fsdecode(odd)), int)
    plain = tmp_path / "caf\u00e9.jpg"
    plain.write_bytes(b"data")
    st = plain.stat()
    # UTF-8 names keep the keys they had before
    assert cache_mod.file_key(plain) == cache_mod._int64_digest(f"{plain}\0{st.st_size}\0{st.st_mtime_ns}")


# -- D4: a source that vanishes ------------------------------------------------------------


def test_a_vanished_source_is_skipped_and_the_journal_retired(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    interrupted_copy(photo_folder, out, monkeypatch, mode="move")
    job = json.loads((out / PENDING).read_text())
    todo = [src for src, dst in output.planned_transfers(job) if (photo_folder / src).exists()]
    (photo_folder / todo[-1]).unlink()  # moved away by another program meanwhile
    result = invoke("run", photo_folder, "--out", out, "--transfer", "move")
    assert result.exit_code == 0, result.output
    assert "disappeared" in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert {"path": todo[-1], "reason": output.VANISHED} in manifest["skipped"]
    assert not (out / PENDING).exists()
    assert invoke("run", photo_folder, "--out", out, "--transfer", "move").exit_code == 2  # finished, not stuck


# -- D5: outputs are never input again ----------------------------------------------------


def test_an_earlier_output_inside_the_input_is_skipped_and_reported_once(photo_folder, tmp_path):
    first = tmp_path / "first"
    assert invoke("run", photo_folder, "--out", first, "-q").exit_code == 0
    first.rename(photo_folder / "sorted")  # the user moves the result into the photos
    for k in range(2):
        out = tmp_path / f"again{k}"
        manifest = json.loads(invoke("run", photo_folder, "--out", out, "--json", "-q").stdout)
        assert manifest["stats"]["images"] == 11  # before the fix: 22, then 33
        assert [s for s in manifest["skipped"] if s["reason"] == OUTPUT_FOLDER_REASON] == [
            {"path": "sorted", "reason": OUTPUT_FOLDER_REASON}]


def test_run_dot_writes_beside_the_folder(photo_folder, monkeypatch):
    monkeypatch.chdir(photo_folder)
    result = invoke("run", ".", "-q")
    assert result.exit_code == 0, result.output
    assert (photo_folder.parent / "photos_clustered" / MANIFEST).is_file()
    assert not any(p.name.endswith("_clustered") for p in photo_folder.iterdir())
    assert default_out(Path(".")) == photo_folder.parent / "photos_clustered"


def test_exclude_globs_leave_out_files_and_folders(photo_folder, tmp_path):
    result = invoke("run", photo_folder, "--out", tmp_path / "out", "--exclude", "b", "--exclude", "*_0.jpg",
                    "--json", "-q")
    manifest = json.loads(result.stdout)
    paths = [m["path"] for c in manifest["clusters"] for m in c["members"]] + [o["path"] for o in manifest["outliers"]]
    assert not any(p.startswith("b/") or p.endswith("_0.jpg") for p in paths)
    assert {s["path"]: s["reason"] for s in manifest["skipped"]} == {
        "b": "excluded by --exclude b", "single_0.jpg": "excluded by --exclude *_0.jpg"}
    assert manifest["stats"]["images"] == 7


# -- D6: NaN -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-0.1"])
def test_threshold_nan_is_refused(photo_folder, tmp_path, value):
    result = invoke("run", photo_folder, "--out", tmp_path / "out", "--threshold", value)
    assert result.exit_code == 2 and "threshold" in result.output
    no_traceback(result)
    assert not (tmp_path / "out").exists()


def test_json_is_written_strictly():
    with pytest.raises(ClusterimgError):
        dumps_json({"threshold": float("nan")})
    assert output._finite(float("nan")) is None and output._finite(0.5) == 0.5


# -- D7: one run per output folder ---------------------------------------------------------


def test_a_second_run_on_a_locked_out_is_refused(photo_folder, tmp_path):
    out = tmp_path / "out"
    with check_paths([photo_folder], out, overwrite=False, resume=False):
        result = invoke("run", photo_folder, "--out", out)
        assert result.exit_code == 2 and "another clusterimg run is using" in result.output
    assert not (out / LOCK).exists()
    (out / LOCK).write_text("")  # left behind by a run killed with -9: not held by anyone
    assert invoke("run", photo_folder, "--out", out, "-q").exit_code == 0
    assert not (out / LOCK).exists()


# -- D8: writability, checked before the long work ------------------------------------------


def test_an_unwritable_out_is_refused_before_reading_images(photo_folder, tmp_path, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("the images were read before the output folder was checked")

    monkeypatch.setattr(cli.api, "cluster", must_not_run)
    out = tmp_path / "ro" / "out"
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(output.os, "access",
                        lambda p, mode: False if Path(p) == tmp_path / "ro" and mode & os.W_OK else real_access(p, mode))
    result = invoke("run", photo_folder, "--out", out)
    assert result.exit_code == 2 and "cannot write" in result.output
    no_traceback(result)
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(output.os, "access",
                        lambda p, mode: False if Path(p) == tmp_path / "out" and mode & os.W_OK else real_access(p, mode))
    result = invoke("run", photo_folder, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "cannot write to the output folder" in result.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_out_is_refused(photo_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = invoke("run", photo_folder, "--out", out)
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2 and "cannot write" in result.output


def test_a_failed_json_write_is_one_line(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output.tempfile, "mkstemp", full)
    with pytest.raises(ClusterimgError, match="No space left"):
        output.write_json_atomic(tmp_path / "x.json", {})


# -- D9: workers die with the run -----------------------------------------------------------


SLOW_METHOD = '''
import time
import numpy as np
from clusterimg.features.base import Method

class Slow(Method):
    name = "slow"
    summary = "sleeps"
    default_threshold = 0.5

    def feature(self, path):
        time.sleep(0.05)
        return np.zeros(1)
'''

RUNNER = '''
import sys
from slowmethod import Slow
from clusterimg.engine.extract import extract_features
extract_features(Slow(), [f"f{k}" for k in range(5000)], workers=2)
'''


def _marked(mark: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mark.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_and_forkserver_die_when_the_run_is_killed(tmp_path):
    (tmp_path / "slowmethod.py").write_text(SLOW_METHOD)
    mark = f"CLUSTERIMG_KILL_TEST_{os.getpid()}_{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", **{mark: "1"})
    run = subprocess.Popen([sys.executable, "-c", RUNNER], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(_marked(mark)) < 4 and time.monotonic() < deadline:  # run, forkserver, 2 workers
            time.sleep(0.1)
        assert len(_marked(mark)) >= 4, "the worker pool did not start"
        run.send_signal(signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 10
        while _marked(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _marked(mark) == []  # before the fix: forkserver, tracker and workers lived on
    finally:
        for pid in _marked(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# -- D10: a damaged cache ---------------------------------------------------------------------


def test_a_damaged_cache_file_is_moved_aside_and_rebuilt(photo_folder, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / cache_mod.CACHE_FILE).write_bytes(b"this is not a database" * 100)
    result = invoke("run", photo_folder, "--out", tmp_path / "out", "--cache-dir", folder)
    assert result.exit_code == 0, result.output
    assert "damaged" in result.output and "moved it aside" in result.output
    aside = [p.name for p in folder.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and (folder / aside[0]).read_bytes().startswith(b"this is not a database")
    again = invoke("run", photo_folder, "--out", tmp_path / "out2", "--cache-dir", folder)
    assert again.exit_code == 0 and "features of 11 images reused" in again.output


def test_a_cache_damaged_while_running_is_dropped_and_the_run_goes_on(tmp_path):
    warnings = []
    with cache_mod.Cache(tmp_path, get_method("phash"), warn=warnings.append) as cache:
        cache.db.close()

        class Broken:  # stands in for a file that went bad under the run: every query fails
            def execute(self, *a):
                raise sqlite3.DatabaseError("database disk image is malformed")

            def close(self):
                pass

        cache.db = Broken()
        assert cache.get_features([1, 2]) == {}
        assert cache.db is None
        cache.put_feature(1, np.zeros(3))
        cache.commit()  # a no-op now, not an error
    assert any("damaged" in w for w in warnings)


# -- D11, D12: links -------------------------------------------------------------------------


def test_a_moved_relative_symlink_does_not_dangle(photo_folder, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_photo(elsewhere / "far.jpg", make_photo(50))
    (photo_folder / "far_link.jpg").symlink_to(os.path.relpath(elsewhere / "far.jpg", photo_folder))
    (photo_folder / "a" / "one_link.jpg").symlink_to("one.jpg")  # its target moves too
    out = tmp_path / "out"
    result = invoke("run", photo_folder, "--out", out, "--transfer", "move", "--json", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    placed = {e["path"]: out / e["output"] for c in manifest["clusters"] for e in c["members"]}
    placed |= {e["path"]: out / e["output"] for e in manifest["outliers"]}
    for name in ("far_link.jpg", "a/one_link.jpg"):
        assert placed[name].is_symlink() and placed[name].exists(), name  # before the fix: dangling
    assert placed["far_link.jpg"].read_bytes() == (elsewhere / "far.jpg").read_bytes()
    assert os.path.samefile(placed["a/one_link.jpg"], placed["a/one.jpg"])


def test_hardlink_of_a_relative_symlink_links_the_file(photo_folder, tmp_path):
    (photo_folder / "a" / "one_link.jpg").symlink_to("one.jpg")
    out = tmp_path / "out"
    manifest = json.loads(invoke("run", photo_folder, "--out", out, "--transfer", "hardlink", "--json", "-q").stdout)
    entry = next(e for c in manifest["clusters"] for e in c["members"] if e["path"] == "a/one_link.jpg")
    assert not (out / entry["output"]).is_symlink()
    assert os.path.samefile(out / entry["output"], photo_folder / "a" / "one.jpg")


def test_links_that_are_not_files_are_named_for_what_they_are(tmp_path):
    root = tmp_path / "in"
    (root / "folder").mkdir(parents=True)
    (root / "loop_a.jpg").symlink_to("loop_b.jpg")
    (root / "loop_b.jpg").symlink_to("loop_a.jpg")
    (root / "to_folder").symlink_to("folder")
    (root / "broken.jpg").symlink_to("nowhere.jpg")
    _, skipped = discover(root)
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["loop_a.jpg"].startswith("symbolic link loop")
    assert reasons["to_folder"].startswith("symbolic link to a folder")
    assert reasons["broken.jpg"].startswith("broken symbolic link")


# -- Ctrl-C tells the truth ------------------------------------------------------------------


@pytest.mark.parametrize("flags, says, never", [
    ([], "what was read so far is in the cache", "Nothing was kept"),
    (["--no-cache"], "Nothing was kept (--no-cache)", "resume"),
])
def test_interrupt_message_says_what_was_kept(photo_folder, tmp_path, monkeypatch, flags, says, never):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.api, "cluster", interrupted)
    result = invoke("run", photo_folder, "--out", tmp_path / "out", *flags)
    assert result.exit_code == 130
    assert says in result.output and never not in result.output


def test_temporary_files_of_a_killed_run_do_not_block_the_next(photo_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".tmp-k1ll3d.json").write_text('{"half": ')  # killed while writing its journal
    (out / LOCK).write_text("")
    result = invoke("run", photo_folder, "--out", out, "-q")
    assert result.exit_code == 0, result.output
