"""`clusterimg run` end to end through Click's CliRunner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clusterimg import output
from clusterimg.engine import extract
from clusterimg.cli import main
from conftest import make_photo, write_photo

EXPECTED = [
    ["b/two.png", "b/two_bright.jpg", "b/two_q30.jpg"],
    ["a/one.jpg", "a/one_small.jpg"],
    ["c/three.jpg", "d/three.jpg"],
]


def invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def clusters_of(manifest: dict) -> list[list[str]]:
    return [[m["path"] for m in c["members"]] for c in manifest["clusters"]]


def stable(manifest: dict) -> dict:
    """The manifest without what legitimately changes between runs."""
    m = json.loads(json.dumps(manifest))
    m.pop("created"), m["stats"].pop("seconds")
    return m


def test_run_writes_the_cluster_tree_and_manifest(photo_folder, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", photo_folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert "11 images read, 0 skipped: 3 clusters, 4 outliers" in result.output
    manifest = json.loads((out / "clusters.json").read_text())
    assert clusters_of(manifest) == EXPECTED
    assert [c["id"] for c in manifest["clusters"]] == ["cluster_0001", "cluster_0002", "cluster_0003"]
    assert sorted(o["path"] for o in manifest["outliers"]) == [f"single_{k}.jpg" for k in range(4)]
    # two inputs named three.jpg both arrive, under distinct names
    assert sorted(p.name for p in (out / "cluster_0003").iterdir()) == ["three.jpg", "three__2.jpg"]
    assert sorted(p.name for p in (out / "outliers").iterdir()) == [f"single_{k}.jpg" for k in range(4)]
    for cluster in manifest["clusters"]:
        assert cluster["representative"] in [m["path"] for m in cluster["members"]]
        rep = next(m for m in cluster["members"] if m["path"] == cluster["representative"])
        assert rep["score"] == 1.0
        assert all(0.0 <= m["score"] <= 1.0 for m in cluster["members"])
        for m in cluster["members"]:
            assert (out / m["output"]).read_bytes() == (photo_folder / m["path"]).read_bytes()


def test_json_goes_to_stdout_and_default_output_sits_beside_the_input(photo_folder):
    result = CliRunner().invoke(main, ["run", str(photo_folder), "--transfer", "none"])
    assert result.exit_code == 0
    assert (photo_folder.parent / "photos_clustered" / "clusters.json").is_file()
    # a second --transfer none run replaces a folder that holds only its earlier manifest
    again = CliRunner().invoke(main, ["run", str(photo_folder), "--transfer", "none", "--json"] +
                               ["--out", str(photo_folder.parent / "photos_clustered")])
    assert again.exit_code == 0, again.output
    manifest = json.loads(again.stdout)
    assert clusters_of(manifest) == EXPECTED
    assert manifest["input"] == str(photo_folder)


def test_a_pipe_with_json_and_no_out_writes_nothing_and_can_run_again(photo_folder):
    """`clusterimg run DIR --transfer none --json | jq ...`, twice."""
    for _ in range(2):
        result = CliRunner().invoke(main, ["run", str(photo_folder), "--json", "--transfer", "none"])
        assert result.exit_code == 0, result.output
        assert clusters_of(json.loads(result.stdout)) == EXPECTED
    assert not (photo_folder.parent / "photos_clustered").exists()


def test_batches_are_merged_across_batch_boundaries(photo_folder, tmp_path):
    one = json.loads(invoke("run", photo_folder, "--method", "phash", "--out", tmp_path / "one", "--transfer", "none",
                            "--batch-size", 0, "--json").stdout)
    # batches of two split every group: only the merge stage can join them
    small = json.loads(invoke("run", photo_folder, "--method", "phash", "--out", tmp_path / "small", "--transfer",
                              "none", "--batch-size", 2, "--json").stdout)
    assert clusters_of(small) == clusters_of(one) == EXPECTED
    assert small["params"]["batch_size"] == 2


def test_same_result_whatever_the_worker_count(tmp_path):
    root = tmp_path / "many"
    for k in range(50):  # enough images for the process pool to be used
        im = make_photo(k, (96, 72))
        write_photo(root / f"p{k:02d}.jpg", im, quality=90)
        if k % 3 == 0:
            write_photo(root / f"p{k:02d}_copy.jpg", im.resize((80, 60)), quality=70)
    runs = [json.loads(invoke("run", root, "--method", "phash", "--out", tmp_path / f"o{w}", "--transfer", "none",
                              "-j", w, "--json").stdout) for w in (1, 2)]
    assert stable(runs[0]) == stable(runs[1])
    assert runs[0]["stats"]["images"] >= extract.MIN_IMAGES_FOR_POOL
    assert len(runs[0]["clusters"]) == 17


def test_broken_files_are_skipped_with_a_reason_and_the_run_goes_on(photo_folder, tmp_path):
    (photo_folder / "empty.jpg").write_bytes(b"")
    (photo_folder / "notes.jpg").write_text("not a picture")
    (photo_folder / "readme.txt").write_text("hello")
    result = invoke("run", photo_folder, "--out", tmp_path / "out", "--transfer", "none")
    assert result.exit_code == 0
    manifest = json.loads((tmp_path / "out" / "clusters.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "readme.txt"}
    assert reasons["empty.jpg"] == "empty file"
    assert clusters_of(manifest) == EXPECTED


@pytest.mark.parametrize("args, message", [
    (["run", "/no/such/folder"], "input folder not found"),
])
def test_fatal_errors_exit_2_with_one_line_and_no_traceback(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_bug_is_one_line_unless_debugging(photo_folder, tmp_path, monkeypatch):
    from clusterimg import api

    def broken(*args, **kwargs):
        raise KeyError("bison_copy.jpg")

    monkeypatch.setattr(api, "cluster", broken)
    result = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: internal error (KeyError: 'bison_copy.jpg'); please report it "
        "(set CLUSTERIMG_DEBUG=1 to see where it happened)"]
    monkeypatch.setenv("CLUSTERIMG_DEBUG", "1")
    debugging = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(tmp_path / "out2")])
    assert isinstance(debugging.exception, KeyError)


def test_existing_output_folder_is_refused_unless_overwrite(photo_folder, tmp_path):
    out = tmp_path / "out"
    assert invoke("run", photo_folder, "--out", out).exit_code == 0
    again = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert invoke("run", photo_folder, "--out", out, "--overwrite").exit_code == 0


def test_output_folder_inside_the_input_is_refused(photo_folder):
    out = photo_folder / "sorted"
    result = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(out)])
    assert result.exit_code == 2 and "is inside the input folder" in result.output
    assert not out.exists()


def test_move_killed_half_way_is_finished_by_the_same_command(photo_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    originals = {p.relative_to(photo_folder).as_posix(): p.read_bytes() for p in photo_folder.rglob("*") if p.is_file()}
    real, calls = output.transfer_file, []

    def crash_half_way(src, dst, mode):
        calls.append(src)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(src, dst, mode)

    monkeypatch.setattr(output, "transfer_file", crash_half_way)
    killed = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(out), "--transfer", "move"])
    assert killed.exit_code == 130 and "Interrupted" in killed.output
    monkeypatch.setattr(output, "transfer_file", real)

    resumed = invoke("run", photo_folder, "--out", out, "--transfer", "move")
    assert resumed.exit_code == 0 and "Finishing the interrupted run" in resumed.output
    manifest = json.loads((out / "clusters.json").read_text())
    placed = {e["path"]: (out / e["output"]).read_bytes()
              for c in manifest["clusters"] for e in c["members"]} | {
        e["path"]: (out / e["output"]).read_bytes() for e in manifest["outliers"]}
    assert placed == originals
    assert not any(p.is_file() for p in photo_folder.rglob("*"))


def test_methods_lists_each_backend_with_its_default_threshold():
    result = invoke("methods")
    assert result.exit_code == 0
    assert "phash" in result.output and "default threshold 0.8" in result.output
    assert "--hash-size" in result.output


def test_bad_backend_option_is_a_usage_error():
    result = CliRunner().invoke(main, ["run", ".", "--hash-size", "99"])
    assert result.exit_code == 2 and "hash-size" in result.output
