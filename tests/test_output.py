"""The output folder: names that never collide, every transfer mode, the
manifest, and a move that survives being interrupted."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clusterimg import output
from clusterimg.errors import ClusterimgError
from clusterimg.images import Skipped
from clusterimg.output import build_manifest, finish_job, pending_job, prepare_out_dir, unique_name, write_output
from clusterimg.result import Cluster, Result, Root
from clusterimg.progress import NoBar


def quiet_bar(total):
    return NoBar(total)


def sample_tree(root: Path) -> Result:
    files = {"a/x.jpg": b"first x", "b/x.jpg": b"second x", "B/X.JPG": b"third x", "y.png": b"y", "z.gif": b"z"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    cluster = Cluster(members=["B/X.JPG", "a/x.jpg", "b/x.jpg"], representative="a/x.jpg",
                      scores={"B/X.JPG": 0.9, "a/x.jpg": 1.0, "b/x.jpg": 0.95})
    return Result(clusters=[cluster], outliers=["y.png", "z.gif"],
                  skipped=[Skipped("notes.txt", "not an image file (by its extension)")], images=5, seconds=0.5,
                  method="phash", threshold=0.8, params={"hash_size": 8}, roots=[Root("", root.resolve())],
                  input_arg=str(root))


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unique_name_is_case_insensitive_and_never_reuses_a_name():
    taken: set[str] = set()
    names = [unique_name(n, taken) for n in ["x.jpg", "X.JPG", "x.jpg", "x__2.jpg"]]
    assert names == ["x.jpg", "X__2.JPG", "x__3.jpg", "x__2__2.jpg"]
    assert len({n.casefold() for n in names}) == 4


def make_manifest(root: Path, transfer: str) -> dict:
    return build_manifest(sample_tree(root), transfer=transfer)


def test_manifest_schema(tmp_path):
    m = make_manifest(tmp_path, "copy")
    assert set(m) >= {"clusterimg", "method", "threshold", "params", "input", "created", "clusters",
                      "outliers", "skipped", "stats"}
    (c,) = m["clusters"]
    assert c["id"] == "cluster_0001" and c["representative"] == "a/x.jpg"
    assert [(e["path"], e["output"], e["score"]) for e in c["members"]] == [
        ("B/X.JPG", "cluster_0001/X.JPG", 0.9),
        ("a/x.jpg", "cluster_0001/x__2.jpg", 1.0),
        ("b/x.jpg", "cluster_0001/x__3.jpg", 0.95),
    ]
    assert m["outliers"] == [{"path": "y.png", "output": "outliers/y.png"}, {"path": "z.gif", "output": "outliers/z.gif"}]
    assert m["skipped"] == [{"path": "notes.txt", "reason": "not an image file (by its extension)"}]
    assert m["stats"] == {"images": 5, "skipped": 1, "clusters": 1, "outliers": 2, "exact_copies": 0, "seconds": 0.5}
    none = make_manifest(tmp_path, "none")
    assert all(e["output"] is None for e in none["outliers"] + none["clusters"][0]["members"])


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink", "none"])
def test_transfer_modes_leave_the_input_untouched(tmp_path, mode):
    root, out = tmp_path / "in", tmp_path / "out"
    manifest = make_manifest(root, mode)
    before = contents(root)
    prepare_out_dir(out, overwrite=False)
    write_output(out, manifest, quiet_bar, print)
    assert contents(root) == before
    written = json.loads((out / "clusters.json").read_text())
    assert written["clusters"] == manifest["clusters"]
    assert not (out / output.PENDING).exists()
    if mode == "none":
        assert sorted(p.name for p in out.iterdir()) == ["clusters.json"]
        return
    for rel_src, rel_dst in output.planned_transfers(manifest):
        target = out / rel_dst
        assert target.read_bytes() == (root / rel_src).read_bytes()
        if mode == "symlink":
            assert target.is_symlink() and Path(os.readlink(target)).is_absolute()
        if mode == "hardlink":
            assert os.path.samefile(target, root / rel_src)


def test_move_moves_every_file_exactly_once(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    manifest = make_manifest(root, "move")
    before = contents(root)
    prepare_out_dir(out, overwrite=False)
    write_output(out, manifest, quiet_bar, print)
    moved = {src: (out / dst).read_bytes() for src, dst in output.planned_transfers(manifest)}
    assert moved == before
    assert not any(p.is_file() for p in root.rglob("*"))


def test_interrupted_move_is_finished_by_running_again(tmp_path, monkeypatch):
    root, out = tmp_path / "in", tmp_path / "out"
    manifest = make_manifest(root, "move")
    before = contents(root)
    prepare_out_dir(out, overwrite=False)

    real, calls = output.transfer_file, []

    def crash_on_third(src, dst, mode):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the moves
        return real(src, dst, mode)

    monkeypatch.setattr(output, "transfer_file", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_output(out, manifest, quiet_bar, print)
    monkeypatch.setattr(output, "transfer_file", real)

    # every file exists exactly once, in the input or in the output
    everywhere = list(contents(root).values()) + [v for k, v in contents(out).items() if not k.endswith(".json")]
    assert sorted(everywhere) == sorted(before.values())
    assert not (out / "clusters.json").exists()

    job = pending_job(out)  # what `clusterimg run` finds when run again
    assert job is not None
    finish_job(out, job, quiet_bar, print)
    assert not (out / output.PENDING).exists()
    assert {src: (out / dst).read_bytes() for src, dst in output.planned_transfers(manifest)} == before
    assert not any(p.is_file() for p in root.rglob("*"))


def test_a_copy_interrupted_after_copying_before_deleting_is_completed(tmp_path):
    src, dst = tmp_path / "a.jpg", tmp_path / "out" / "a.jpg"
    src.write_bytes(b"data")
    dst.parent.mkdir()
    dst.write_bytes(b"data")  # a cross-device move that stopped before unlinking the source
    output.transfer_file(src, dst, "move")
    assert not src.exists() and dst.read_bytes() == b"data"


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(ClusterimgError, match="already exists"):
        prepare_out_dir(out, overwrite=False)
    with pytest.raises(ClusterimgError, match="not a clusterimg output"):
        prepare_out_dir(out, overwrite=True)
    assert (out / "mine.txt").read_text() == "user data"


def test_overwrite_replaces_an_earlier_copy_output_only(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    manifest = make_manifest(root, "copy")
    prepare_out_dir(out, overwrite=False)
    write_output(out, manifest, quiet_bar, print)
    prepare_out_dir(out, overwrite=True)
    assert list(out.iterdir()) == []


def test_overwrite_never_deletes_originals_an_earlier_move_put_there(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    manifest = make_manifest(root, "move")
    prepare_out_dir(out, overwrite=False)
    write_output(out, manifest, quiet_bar, print)
    with pytest.raises(ClusterimgError, match="moved there"):
        prepare_out_dir(out, overwrite=True)
    assert len([p for p in out.rglob("*") if p.is_file()]) == 6  # 5 images + manifest
