"""What a new user tripped over (exact copies, several folders, CSV, counts, hints)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np

from click.testing import CliRunner

import clusterimg
from clusterimg.api import DEFAULT_METHOD
from clusterimg.cli import main, plural
from clusterimg.features import get_method
from conftest import make_photo, write_photo


def run_cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_byte_identical_files_are_exact_copies_scored_one(photo_folder, tmp_path):
    shutil.copy(photo_folder / "single_0.jpg", photo_folder / "single_0 copy.jpg")  # an outlier's copy
    shutil.copy(photo_folder / "a" / "one.jpg", photo_folder / "one_again.jpg")  # a cluster member's copy
    result = run_cli("run", photo_folder, "--out", tmp_path / "out", "--transfer", "none", "--no-cache")
    assert result.exit_code == 0, result.output
    assert "(2 exact copies)" in result.output
    manifest = json.loads((tmp_path / "out" / "clusters.json").read_text())
    members = {m["path"]: (c["id"], m) for c in manifest["clusters"] for m in c["members"]}
    copy_id, copy = members["single_0 copy.jpg"]
    assert members["single_0.jpg"][0] == copy_id and copy["score"] == 1.0 and copy["exact"] is True
    one_id, again = members["one_again.jpg"]
    assert members["a/one.jpg"][0] == one_id and again["exact"] and members["a/one.jpg"][1]["exact"]
    assert again["score"] == members["a/one.jpg"][1]["score"]  # a copy scores what its original scores
    assert members["a/one_small.jpg"][1]["exact"] is False  # near, not exact
    assert manifest["stats"]["exact_copies"] == 2 and manifest["stats"]["images"] == 13


def test_exact_copies_of_an_unreadable_file_are_skipped_with_its_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not really a jpeg" * 10)
    (folder / "broken2.jpg").write_bytes(b"not really a jpeg" * 10)
    result = clusterimg.cluster(folder, cache=False)
    assert [s.path for s in result.skipped] == ["broken.jpg", "broken2.jpg"]
    assert result.skipped[0].reason == result.skipped[1].reason and result.images == 0


def test_several_folders_on_the_command_line(photo_folder, tmp_path):
    extra = tmp_path / "extra"
    write_photo(extra / "one_again.jpg", make_photo(1), quality=88)
    result = run_cli("run", photo_folder, extra, "--out", tmp_path / "out", "--no-cache")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "clusters.json").read_text())
    assert ["extra/one_again.jpg", "photos/a/one.jpg", "photos/a/one_small.jpg"] in \
        [[m["path"] for m in c["members"]] for c in manifest["clusters"]]
    assert (tmp_path / "out" / "cluster_0001" / "one_again.jpg").is_file()
    assert run_cli("run", photo_folder, extra).exit_code == 2  # several inputs need --out


def test_csv_on_stdout(photo_folder):
    result = run_cli("run", photo_folder, "--transfer", "none", "--format", "csv", "--no-cache")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 11 and list(rows[0]) == ["path", "cluster", "representative", "score", "exact"]
    by_path = {r["path"]: r for r in rows}
    assert by_path["a/one_small.jpg"]["cluster"] == by_path["a/one.jpg"]["cluster"] != ""
    assert by_path["single_0.jpg"]["cluster"] == "" and by_path["single_0.jpg"]["exact"] == "false"
    assert "clusters" in result.stderr  # the summary goes to stderr


def test_no_recursive_with_images_only_in_subfolders_hints_at_them(tmp_path):
    folder = tmp_path / "dump"
    write_photo(folder / "2019" / "a.jpg", make_photo(1))
    write_photo(folder / "2020" / "b.jpg", make_photo(2))
    result = run_cli("run", folder, "--no-recursive", "--out", tmp_path / "out", "--no-cache")
    assert result.exit_code == 0
    assert "0 images read" in result.output
    assert "2 images in subfolders; drop --no-recursive" in result.output


def test_counts_are_plural_aware():
    assert plural(1, "cluster") == "1 cluster" and plural(2, "cluster") == "2 clusters"
    assert plural(1, "exact copy", "exact copies") == "1 exact copy"


def test_one_cluster_one_image_summary(tmp_path):
    folder = tmp_path / "pair"
    im = make_photo(5)
    write_photo(folder / "x.png", im)
    write_photo(folder / "x_small.png", im.resize((160, 120)))
    write_photo(folder / "lonely.png", make_photo(6))
    result = run_cli("run", folder, "--out", tmp_path / "out", "--no-cache")
    assert "3 images read, 0 skipped: 1 cluster, 1 outlier in" in result.output, result.output


def test_cache_line_counts_images_read(photo_folder, tmp_path):
    (photo_folder / "broken.jpg").write_bytes(b"\xff\xd8 nothing")
    args = ["run", photo_folder, "--transfer", "none", "--cache-dir", tmp_path / "cache"]
    first = run_cli(*args, "--out", tmp_path / "a")
    assert "Cache: features of 0 images reused, 11 computed" in first.output  # the broken file is not "read"
    assert "11 images read, 1 skipped" in first.output


def test_threshold_plot_without_matplotlib_fails_before_the_work(photo_folder, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    read = []
    monkeypatch.setattr("clusterimg.api.read_images", lambda *a, **k: read.append(1))
    result = run_cli("threshold", photo_folder, "--no-input", "--plot", tmp_path / "c.png")
    assert result.exit_code == 2 and "matplotlib" in result.output and not read


def test_default_output_of_dot_goes_beside_the_folder(photo_folder, monkeypatch):
    monkeypatch.chdir(photo_folder)
    result = run_cli("run", ".", "--transfer", "none", "--no-cache")
    assert result.exit_code == 0, result.output
    assert (photo_folder.parent / "photos_clustered" / "clusters.json").is_file()
    assert not (Path(".") / "photos_clustered").exists()


def test_threshold_on_unrelated_photos_suggests_a_safe_threshold(tmp_path):
    folder = tmp_path / "unrelated"
    for k in range(30):
        write_photo(folder / f"p{k:02d}.jpg", make_photo(300 + k, size=(160, 120)), quality=90)
    result = run_cli("threshold", folder, "--no-input", "--no-cache")
    assert result.exit_code == 0, result.output
    assert "holds no clear duplicates" in result.output
    suggested = float(result.output.split("Suggested threshold: ")[1].split(":")[0])
    assert suggested >= get_method(DEFAULT_METHOD).default_threshold  # never below the calibrated default
    clustered = clusterimg.cluster(folder, threshold=suggested, cache=False)
    assert clustered.clusters == []  # the suggestion joins no unrelated photos


def test_threshold_shows_the_borderline_pairs_with_paths_before_asking(photo_folder):
    result = CliRunner().invoke(main, ["threshold", str(photo_folder), "--input", "--no-cache"], input="\n")
    assert result.exit_code == 0, result.output
    shown = result.output.index("Pairs of the sample just above")
    asked = result.output.index("Threshold (Enter takes the suggestion)")
    assert shown < asked
    assert f"{photo_folder}/" in result.output[shown:asked]  # full paths, not bare names


def test_reference_folder_is_preferred_copied_not_moved_and_kept_by_dedupe(photo_folder, tmp_path):
    masters = tmp_path / "masters"
    write_photo(masters / "one_master.png", make_photo(1))
    before = (masters / "one_master.png").read_bytes()
    result = run_cli("run", photo_folder, "--reference", masters, "--out", tmp_path / "out", "--transfer", "move",
                     "--no-cache")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "clusters.json").read_text())
    (one,) = [c for c in manifest["clusters"] if "masters/one_master.png" in [m["path"] for m in c["members"]]]
    assert one["representative"] == "masters/one_master.png"
    by_path = {m["path"]: m for m in one["members"]}
    assert by_path["masters/one_master.png"]["reference"] is True and by_path["masters/one_master.png"]["score"] == 1.0
    assert "reference" not in by_path["photos/a/one.jpg"]
    assert (masters / "one_master.png").read_bytes() == before  # copied, not moved
    assert not (photo_folder / "a" / "one.jpg").exists()  # the others were moved
    done = run_cli("dedupe", tmp_path / "out")
    assert done.exit_code == 0, done.output
    out_file = tmp_path / "out" / by_path["masters/one_master.png"]["output"]
    assert out_file.exists()  # the reference copy stays; the others of its cluster went to the trash
    assert not (tmp_path / "out" / by_path["photos/a/one.jpg"]["output"]).exists()


def test_progress_moves_while_slow_pairs_are_scored():
    """orb takes milliseconds a pair: the bar must step every few hundred pairs, not every 4,096."""
    from clusterimg.engine.search import find_pairs
    from clusterimg.features import get_method

    method = get_method("orb")
    steps = []

    class Bar:
        def __init__(self, total):
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            steps.append(k)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(50)]  # 1,225 pairs
    stacked = method.stack([method.extract(im) for im in images])
    find_pairs(method, stacked, len(images), 0.5, exhaustive=True, bar=Bar)
    assert sum(steps) == 50 * 49 // 2
    assert len(steps) >= 3 and max(steps) <= method.score_chunk


def test_default_method_does_not_join_pictures_that_share_only_their_coarse_layout(tmp_path):
    # Two different fine textures over the same blurred photo: a perceptual
    # hash of a small thumbnail sees one picture (phash, the old default,
    # joins them); the default method matches keypoints and does not.
    from clusterimg.images import load_image
    import cv2

    base = load_image(Path(__file__).resolve().parents[1] / "examples" / "lemur.jpg", max_side=384)
    coarse = cv2.GaussianBlur(base, (0, 0), 12).astype(np.float64)
    for seed in (1, 2):
        texture = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 1, base.shape[:2]), (0, 0), 1.2)
        picture = np.clip(coarse + (texture / texture.std() * 40)[..., None], 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"look_alike_{seed}.png"), picture[..., ::-1])
    assert [c.members for c in clusterimg.cluster(tmp_path, method="phash", cache=False, workers=1).clusters] == [
        ["look_alike_1.png", "look_alike_2.png"]]
    default = clusterimg.cluster(tmp_path, cache=False, workers=1)
    assert default.method == "orb" and default.clusters == [] and len(default.outliers) == 2
