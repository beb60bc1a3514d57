"""clusterimg dedupe / undo: keep one image per cluster, move the others to a
trash folder, never lose or overwrite a file, survive being killed, undo."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
import numpy as np
from PIL import Image

from clusterimg import dedupe as dd
from clusterimg.cli import main
from clusterimg.errors import ClusterimgError

from conftest import make_photo, write_photo

REPO = Path(__file__).resolve().parents[1]


def tree(*folders: Path) -> dict[str, tuple[str, int]]:
    """path -> (md5, mtime_ns) of every file under the folders."""
    found = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                found[str(p)] = (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return found


def md5_multiset(*folders: Path) -> list[str]:
    return sorted(md5 for md5, _ in tree(*folders).values())


def make_set(tmp_path: Path, clusters: int = 3, per: int = 3, outliers: int = 2) -> tuple[Path, Path, dict]:
    """An input folder and a hand-written --transfer none manifest: cluster k
    holds per copies of photo k in sub/ folders, of growing pixel counts; the
    largest file of each cluster is a small-but-heavy PNG."""
    root, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    manifest = {"clusterimg": "0.1.0", "method": "phash", "threshold": 0.8, "params": {}, "input": str(root),
                "transfer": "none", "created": "2026-11-26T10:00:00+00:00", "clusters": [], "outliers": [],
                "skipped": [], "stats": {}}
    for k in range(clusters):
        base = make_photo(k)
        members = []
        for v in range(per):
            rel = f"s{k}/copy{v}.jpg"
            write_photo(root / rel, base.resize((160 + 40 * v, 120 + 30 * v)), quality=60)
            members.append(rel)
        heavy = f"s{k}/heavy.png"
        write_photo(root / heavy, base.resize((100, 75)))
        members.append(heavy)
        members.sort()
        manifest["clusters"].append({"id": f"cluster_{k + 1:04d}", "representative": members[0],
                                     "members": [{"path": p, "output": None, "score": 0.9} for p in members]})
    for k in range(outliers):
        rel = f"lonely{k}.jpg"
        write_photo(root / rel, make_photo(50 + k), quality=80)
        manifest["outliers"].append({"path": rel, "output": None})
    (out / "clusters.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root, out, manifest


def test_keep_rules_pick_as_documented(tmp_path):
    root, out, manifest = make_set(tmp_path, clusters=1, per=3)
    old = time.time() - 1000
    os.utime(root / "s0/copy1.jpg", (old, old))
    picks = {}
    for rule in dd.KEEP_RULES:
        plan = dd.plan_dedupe(manifest, out, keep=rule)
        assert len(plan.kept) == 1 and len(plan.moves) == 3
        picks[rule] = plan.kept[0][1]
    assert picks["best"] == "s0/copy2.jpg"  # most pixels
    assert picks["largest"] == "s0/heavy.png"  # most bytes
    assert picks["oldest"] == "s0/copy1.jpg"
    assert picks["representative"] == "s0/copy0.jpg"
    assert picks["newest"] != "s0/copy1.jpg"
    sizes = {p: (root / p).stat().st_size for p in ("s0/copy0.jpg", "s0/copy1.jpg", "s0/copy2.jpg", "s0/heavy.png")}
    assert max(sizes, key=sizes.get) == "s0/heavy.png"  # the fixture really has the heavy file


def test_best_breaks_pixel_ties_by_file_size_then_age():
    f = dd.Facts
    facts = [f("a.jpg", "", 100, 5, 1000), f("b.jpg", "", 200, 9, 1000), f("c.jpg", "", 200, 7, 1000)]
    assert dd.choose(facts, "best") == "c.jpg"
    facts = [f("b.jpg", "", 200, 7, 1000), f("a.jpg", "", 200, 7, 1000)]
    assert dd.choose(facts, "best") == "a.jpg"


def test_dry_run_touches_nothing(tmp_path):
    root, out, _ = make_set(tmp_path)
    before = tree(root, out)
    result = CliRunner().invoke(main, ["dedupe", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would be moved" in result.output and "nothing was touched" in result.output
    assert result.output.count("\nmove ") + result.output.startswith("move ") == 9
    assert tree(root, out) == before
    assert sorted(p.name for p in out.iterdir()) == ["clusters.json"]


def test_dedupe_then_undo_restores_every_file_byte_identical(tmp_path):
    root, out, _ = make_set(tmp_path)
    before = tree(root)
    runner = CliRunner()
    result = runner.invoke(main, ["dedupe", str(out)])
    assert result.exit_code == 0, result.output
    trash = out / "duplicates"
    # the best of each cluster stays, the others keep their relative paths in the trash
    for k in range(3):
        assert (root / f"s{k}/copy2.jpg").is_file()
        for name in ("copy0.jpg", "copy1.jpg", "heavy.png"):
            assert not (root / f"s{k}" / name).exists()
            assert (trash / f"s{k}" / name).is_file()
    assert (root / "lonely0.jpg").is_file()
    assert md5_multiset(root, trash) == sorted(m for m, _ in before.values())
    journal = json.loads((out / dd.JOURNAL).read_text())
    assert journal["state"] == "done" and len(journal["moves"]) == 9

    result = runner.invoke(main, ["undo", str(out)])
    assert result.exit_code == 0, result.output
    assert "9 files put back" in result.output
    assert tree(root) == before  # same paths, same bytes, same modification times
    assert not trash.exists() and not (out / dd.JOURNAL).exists()


def test_dedupe_of_the_output_tree_of_a_real_run(photo_folder, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(photo_folder), "--out", str(out), "--no-cache", "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "clusters.json").read_text())
    assert manifest["clusters"]
    inputs = tree(photo_folder)
    outputs = tree(out)
    result = runner.invoke(main, ["dedupe", str(out)])
    assert result.exit_code == 0, result.output
    assert tree(photo_folder) == inputs  # the originals are not touched
    moved = [p for p in (out / "duplicates").rglob("*") if p.is_file()]
    assert len(moved) == sum(len(c["members"]) - 1 for c in manifest["clusters"])
    for p in moved:  # trash/<cluster>/<name>, as in the output tree
        assert p.parent.parent == out / "duplicates" and p.parent.name.startswith("cluster_")
    assert runner.invoke(main, ["undo", str(out)]).exit_code == 0
    assert tree(out) == outputs


def test_trash_never_overwrites_a_file_already_there(tmp_path):
    root, out, _ = make_set(tmp_path, clusters=1)
    squatter = out / "duplicates" / "s0" / "copy0.jpg"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"not a photo, mine")
    original = (root / "s0/copy0.jpg").read_bytes()
    assert CliRunner().invoke(main, ["dedupe", str(out)]).exit_code == 0
    assert squatter.read_bytes() == b"not a photo, mine"
    assert (out / "duplicates/s0/copy0__2.jpg").read_bytes() == original
    assert CliRunner().invoke(main, ["undo", str(out)]).exit_code == 0
    assert (root / "s0/copy0.jpg").read_bytes() == original
    assert squatter.read_bytes() == b"not a photo, mine"


class Crash(Exception):
    pass


def crash_after(monkeypatch, n: int, half: bool = False):
    """Make the dedupe die at its n-th move; ``half``: after linking the new
    name and before dropping the old one (the worst moment)."""
    real = dd.transfer_file
    calls = {"n": 0}

    def flaky(src, dst, mode):
        calls["n"] += 1
        if calls["n"] == n:
            if half:
                Path(dst).parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
            raise Crash("simulated crash")
        return real(src, dst, mode)

    monkeypatch.setattr(dd, "transfer_file", flaky)


@pytest.mark.parametrize("half", [False, True])
def test_interrupted_dedupe_finishes_when_run_again(tmp_path, monkeypatch, half):
    root, out, _ = make_set(tmp_path)
    before = sorted(m for m, _ in tree(root).values())
    crash_after(monkeypatch, 5, half)
    with pytest.raises(Crash):
        dd.run_dedupe(out)
    monkeypatch.undo()
    assert json.loads((out / dd.JOURNAL).read_text())["state"] == "pending"
    plan = dd.run_dedupe(out, keep="oldest")  # the journal decides, not these options
    assert plan.resumed and plan.keep == "best"
    trash = out / "duplicates"
    assert md5_multiset(root, trash) == before  # every file exactly once
    assert len([p for p in trash.rglob("*") if p.is_file()]) == 9
    assert dd.undo(out) == 9
    assert md5_multiset(root) == before


@pytest.mark.parametrize("half", [False, True])
def test_undo_after_an_interrupted_dedupe(tmp_path, monkeypatch, half):
    root, out, _ = make_set(tmp_path)
    before = tree(root)
    crash_after(monkeypatch, 4, half)
    with pytest.raises(Crash):
        dd.run_dedupe(out)
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["undo", str(out)])
    assert result.exit_code == 0, result.output
    assert tree(root) == before
    assert not (out / "duplicates").exists()


def test_interrupted_undo_is_finished_by_undo_and_blocks_dedupe(tmp_path, monkeypatch):
    root, out, _ = make_set(tmp_path)
    before = tree(root)
    dd.run_dedupe(out)
    crash_after(monkeypatch, 3)
    with pytest.raises(Crash):
        dd.undo(out)
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["dedupe", str(out)])
    assert result.exit_code == 2 and "undo was interrupted" in result.output
    dd.undo(out)
    assert tree(root) == before


SLOW_DEDUPE = """
import sys, time
from clusterimg import dedupe
real = dedupe.transfer_file
def slow(src, dst, mode):
    time.sleep(0.03)
    return real(src, dst, mode)
dedupe.transfer_file = slow
dedupe.run_dedupe(sys.argv[1])
"""


@pytest.mark.parametrize("moved_before_kill", [0, 6, 20])
def test_sigkill_in_the_middle_then_rerun_loses_nothing(tmp_path, moved_before_kill):
    root, out, _ = make_set(tmp_path, clusters=10, per=3, outliers=1)
    before = sorted(m for m, _ in tree(root).values())
    trash = out / "duplicates"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DEDUPE, str(out)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = len([p for p in trash.rglob("*") if p.is_file()]) if trash.exists() else 0
        if (out / dd.JOURNAL).exists() and done >= moved_before_kill:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the dedupe ended before it could be killed"
    # nothing lost: every file still there at least once (a move killed half
    # way leaves one file under both names)...
    assert not Counter(before) - Counter(md5_multiset(root, trash))
    dd.run_dedupe(out)  # ...and the re-run finishes it: exactly once
    assert md5_multiset(root, trash) == before
    assert len([p for p in trash.rglob("*") if p.is_file()]) == 30
    dd.undo(out)
    assert md5_multiset(root) == before and not trash.exists()


def test_refuses_when_a_file_is_missing_and_touches_nothing(tmp_path):
    root, out, _ = make_set(tmp_path)
    (root / "s1/copy0.jpg").unlink()
    before = tree(root, out)
    result = CliRunner().invoke(main, ["dedupe", str(out)])
    assert result.exit_code == 2
    assert "changed since the run" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert tree(root, out) == before


def test_refuses_when_the_manifest_records_another_size(tmp_path):
    root, out, manifest = make_set(tmp_path)
    for c in manifest["clusters"]:
        for m in c["members"]:
            st = (root / m["path"]).stat()
            m["size"], m["mtime_ns"] = st.st_size, st.st_mtime_ns
    assert dd.plan_dedupe(manifest, out).moves  # recorded and unchanged: fine
    with open(root / "s2/copy1.jpg", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ClusterimgError, match="changed since the run") as e:
        dd.plan_dedupe(manifest, out)
    assert e.value.exit_code == 2


def test_a_file_changed_after_planning_is_not_moved(tmp_path, monkeypatch):
    root, out, _ = make_set(tmp_path)
    crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        dd.run_dedupe(out)
    monkeypatch.undo()
    job = json.loads((out / dd.JOURNAL).read_text())
    victim = Path(job["moves"][-1]["src"])
    victim.write_bytes(victim.read_bytes() + b"edited")
    with pytest.raises(ClusterimgError, match="changed since the dedupe was planned"):
        dd.run_dedupe(out)
    assert victim.is_file()


@pytest.mark.parametrize("where", ["file", "contains_input", "inside_input", "inside_cluster_folder"])
def test_refuses_an_odd_trash_folder(tmp_path, where):
    root, out, manifest = make_set(tmp_path)
    trash = {"file": root / "lonely0.jpg", "contains_input": tmp_path, "inside_input": root / "trash",
             "inside_cluster_folder": out / "cluster_0001" / "t"}[where]
    if where == "inside_cluster_folder":
        manifest["transfer"] = "copy"
        for c in manifest["clusters"]:
            for m in c["members"]:
                m["output"] = f"{c['id']}/{Path(m['path']).name}"
        (out / "clusters.json").write_text(json.dumps(manifest))
    before = tree(root, out)
    result = CliRunner().invoke(main, ["dedupe", str(out), "--input", "--trash", str(trash)])
    assert result.exit_code == 2, result.output
    assert "Error: " in result.output and "Traceback" not in result.output
    assert tree(root, out) == before


def test_decisions_file_moves_exactly_what_it_removes(tmp_path):
    root, out, manifest = make_set(tmp_path)
    decisions = {"format": "clusterimg-decisions", "version": 1, "manifest_created": manifest["created"],
                 "keep": ["s0/copy0.jpg", "s0/copy2.jpg"], "remove": ["s0/copy1.jpg", "s0/heavy.png", "nope.jpg"]}
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(decisions))
    result = CliRunner().invoke(main, ["dedupe", str(out), "--decisions", str(path)])
    assert result.exit_code == 0, result.output
    assert "no cluster member" in result.output  # the stray path: one warning, the run goes on
    moved = sorted(str(p.relative_to(out / "duplicates")) for p in (out / "duplicates").rglob("*") if p.is_file())
    assert moved == ["s0/copy1.jpg", "s0/heavy.png"]  # clusters it does not mention stay whole
    assert (root / "s1/copy0.jpg").is_file()


def test_decisions_of_another_run_or_not_decisions_are_refused(tmp_path):
    root, out, manifest = make_set(tmp_path)
    before = tree(root, out)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "clusterimg-decisions", "manifest_created": "1999-01-01T00:00:00+00:00",
                                 "keep": [], "remove": ["s0/copy1.jpg"]}))
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2")
    for path, words in ((other, "another run"), (junk, "cannot read")):
        result = CliRunner().invoke(main, ["dedupe", str(out), "--decisions", str(path)])
        assert result.exit_code == 2 and words in result.output
    assert tree(root, out) == before


def test_second_dedupe_and_undo_without_journal_are_refused(tmp_path):
    root, out, _ = make_set(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["undo", str(out)])
    assert result.exit_code == 2 and "nothing to undo" in result.output
    assert runner.invoke(main, ["dedupe", str(out)]).exit_code == 0
    result = runner.invoke(main, ["dedupe", str(out)])
    assert result.exit_code == 2 and "already deduplicated" in result.output


def test_undo_refuses_to_overwrite_a_new_file_at_an_original_place(tmp_path):
    root, out, _ = make_set(tmp_path)
    dd.run_dedupe(out)
    newcomer = root / "s0/copy0.jpg"
    newcomer.write_bytes(b"a new file that took the name")
    trash_before = tree(out / "duplicates")
    result = CliRunner().invoke(main, ["undo", str(out)])
    assert result.exit_code == 2 and "exists again" in result.output
    assert newcomer.read_bytes() == b"a new file that took the name"
    assert tree(out / "duplicates") == trash_before
    assert (out / dd.JOURNAL).is_file()


def test_output_of_symlink_run_and_of_none_run_need_input(tmp_path):
    root, out, manifest = make_set(tmp_path)
    with pytest.raises(ClusterimgError, match="--input"):
        dd.plan_dedupe(manifest, out, target="output")
    manifest["transfer"] = "symlink"
    with pytest.raises(ClusterimgError, match="symbolic links"):
        dd.plan_dedupe(manifest, out)


def test_input_folder_found_from_a_relative_input(tmp_path, monkeypatch):
    root, out, manifest = make_set(tmp_path, clusters=1)
    manifest["input"] = "in"  # as typed in tmp_path; the output folder's parent resolves it
    monkeypatch.chdir("/")
    assert dd.input_root(manifest, out) == root.resolve()
    assert Image.open(dd.input_file(manifest, out, "s0/copy0.jpg")).size == (160, 120)


def test_picture_box_sees_flat_borders_and_nothing_in_a_photo():
    photo = np.asarray(make_photo(3, (300, 200)).convert("L"))
    assert dd.picture_box(photo) == (1.0, 1.0)
    framed = np.full((260, 360), 250, np.uint8)  # a white margin of 30 px all round
    framed[30:230, 30:330] = photo
    fw, fh = dd.picture_box(framed)
    assert abs(fw - 300 / 360) < 0.01 and abs(fh - 200 / 260) < 0.01
    letterbox = np.zeros((280, 300), np.uint8)
    letterbox[40:240] = photo
    assert dd.picture_box(letterbox) == (1.0, 200 / 280)
    assert dd.picture_box(np.full((50, 50), 128, np.uint8)) == (1.0, 1.0)  # all flat: no picture to find


def test_a_plain_background_is_no_border_but_a_frame_around_a_copy_is():
    f = dd.Facts
    studio = f("studio.jpg", "", 10, 1, 1200 * 900, 4 / 3, (0.8, 0.9))  # white wall up to the edges
    turned = f("turned.jpg", "", 20, 1, 1200 * 900, 4 / 3, (1.0, 1.0))
    framed = f("framed.jpg", "", 30, 1, 1400 * 1100, 14 / 11, (1200 / 1400, 900 / 1100))
    assert dd.bordered_copies([studio, turned, framed]) == {"framed.jpg": studio}
    assert dd.choose([studio, framed], "best") == "studio.jpg"
    assert dd.choose([studio, turned], "best") == "turned.jpg"  # a pixel tie: the larger file, as before


def test_best_keeps_the_original_over_a_bordered_copy_with_more_pixels(tmp_path):
    root, out, manifest = make_set(tmp_path, clusters=1, per=1, outliers=0)
    base = make_photo(0).resize((400, 300))
    write_photo(root / "s0/original.jpg", base, quality=90)
    framed = Image.new("RGB", (480, 380), (255, 255, 255))
    framed.paste(base, (40, 40))
    write_photo(root / "s0/original_border.jpg", framed, quality=90)
    write_photo(root / "s0/original_small.jpg", base.resize((300, 225)), quality=90)
    members = manifest["clusters"][0]["members"]
    members += [{"path": f"s0/{n}.jpg", "output": None, "score": 0.9}
                for n in ("original", "original_border", "original_small")]
    plan = dd.plan_dedupe(manifest, out, keep="best")
    assert plan.kept[0][1] == "s0/original.jpg"
    assert dd.pixel_count(root / "s0/original_border.jpg") > dd.pixel_count(root / "s0/original.jpg")


def noisy_set(tmp_path: Path):
    """make_set's one cluster plus an original (JPEG 92, textured on one
    half, smooth on the other), its noisy copy
    (Gaussian noise, sigma 8, JPEG 90: the largest file), a re-save at JPEG
    50 and a blurred copy, all of the original's size."""
    from PIL import ImageFilter

    import cv2

    root, out, manifest = make_set(tmp_path, clusters=1, per=1, outliers=0)
    # a photo has detail somewhere (here: fine texture on its left half) and smooth parts
    texture = cv2.GaussianBlur(np.random.default_rng(1).normal(0, 60, (360, 240)).astype(np.float32), (0, 0), 1.0)
    pixels = np.asarray(make_photo(0).resize((480, 360))).astype(np.float32)
    pixels[:, :240] += texture[..., None]
    base = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    noise = np.random.default_rng(0).normal(0, 8, (360, 480, 1))
    write_photo(root / "s0/original.jpg", base, quality=92)
    write_photo(root / "s0/noisy.jpg", Image.fromarray(np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8)),
                quality=90)
    write_photo(root / "s0/resaved.jpg", base, quality=50)
    write_photo(root / "s0/blurred.jpg", base.filter(ImageFilter.GaussianBlur(1.5)), quality=92)
    manifest["clusters"][0]["members"] += [{"path": f"s0/{n}.jpg", "output": None, "score": 0.9}
                                           for n in ("original", "noisy", "resaved", "blurred")]
    return root, out, manifest


def test_a_noisy_copy_is_told_from_a_resaved_or_blurred_one(tmp_path):
    root, _, _ = noisy_set(tmp_path)
    g = {n: dd.grain(root / f"s0/{n}.jpg") for n in ("original", "noisy", "resaved", "blurred")}
    assert dd.noisier(g["noisy"], g["original"])
    # less grain in the copy is smoothing (JPEG, blur), which never makes the original the noisy one
    assert not dd.noisier(g["original"], g["resaved"]) and not dd.noisier(g["original"], g["blurred"])
    assert g["resaved"][2] > g["original"][2] > 0  # coarser JPEG steps are seen
    assert dd.grain(root / "missing.jpg") is None


def test_best_keeps_the_original_over_its_noisy_copy_in_dedupe_and_report(tmp_path, monkeypatch):
    from clusterimg.report import build_report

    from report_fixture import page_data

    root, out, manifest = noisy_set(tmp_path)
    sizes = {n: (root / f"s0/{n}.jpg").stat().st_size for n in ("original", "noisy", "resaved", "blurred")}
    assert max(sizes, key=sizes.get) == "noisy"  # the file size alone would keep the noisy copy
    (out / "clusters.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert dd.plan_dedupe(manifest, out, keep="best").kept[0][1] == "s0/original.jpg"
    shown = page_data(build_report(out))["clusters"][0]["m"]
    assert [m[0] for m in shown if m[9]] == ["s0/original.jpg"]  # the report ticks the same member
    # built again, the report reads the grain it measured from its thumbnail index
    from clusterimg.report import html as report_html

    calls = []
    monkeypatch.setattr(report_html, "grain", lambda file: calls.append(file) or dd.grain(file))
    shown = page_data(build_report(out))["clusters"][0]["m"]
    assert [m[0] for m in shown if m[9]] == ["s0/original.jpg"] and calls == []
