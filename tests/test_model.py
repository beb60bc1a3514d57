"""The saved cluster model: fit, assign, save/load, labels."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clusterimg.cli import main
from clusterimg.errors import ClusterimgError
from clusterimg.features import available
from clusterimg.features.base import VectorMethod
from clusterimg.model import ClusterModel, fit, from_result, load
from clusterimg.result import Cluster, Result
from tests.conftest import make_photo, write_photo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def phash_model() -> ClusterModel:
    return fit(EXAMPLES, "phash", cache=False, workers=1)


def own_cluster(model: ClusterModel) -> dict[str, int]:
    expected = {p: -1 for p in model.outliers}
    for c in model.clusters:
        expected.update({p: c.id for p in c.members})
    return expected


def test_fit_then_assign_the_training_folder_gives_each_image_its_own_cluster(phash_model):
    expected = own_cluster(phash_model)
    assert len(phash_model.clusters) >= 3 and phash_model.outliers  # both cases are exercised
    got = phash_model.assign([EXAMPLES / p for p in sorted(expected)])
    assert {Path(a.path).name: a.cluster for a in got} == expected
    assert all(a.score == 1.0 for a in got if a.cluster >= 0)


def test_an_image_unlike_every_cluster_gets_minus_one(phash_model, tmp_path):
    strange = write_photo(tmp_path / "strange.png", make_photo(1234))
    decoded = phash_model.backend.decode(EXAMPLES / "duck.jpg")
    answers = phash_model.assign([strange, decoded])
    assert answers[0].cluster == -1 and answers[0].score < phash_model.threshold
    duck = next(c.id for c in phash_model.clusters if "duck.jpg" in c.members)
    assert answers[1].cluster == duck and answers[1].path == "#1"  # an already decoded image works too


def test_an_unreadable_file_is_one_error_and_the_others_are_assigned(phash_model, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    answers = phash_model.assign([text, EXAMPLES / "crab.jpg"])
    assert answers[0].cluster == -1 and "cannot identify" in answers[0].error and answers[0].labels == []
    assert answers[1].cluster >= 0 and answers[1].error is None


def test_save_load_gives_identical_assignments(phash_model, tmp_path):
    phash_model.set_labels({0: ["first"]})
    path = phash_model.save(tmp_path / "m.cim")
    loaded = load(path)
    files = sorted(EXAMPLES.glob("*.jpg"))
    assert [a.to_dict() for a in loaded.assign(files)] == [a.to_dict() for a in phash_model.assign(files)]
    assert loaded.labels == {0: ["first"]} and loaded.to_json() == phash_model.to_json()
    with pytest.raises(ClusterimgError, match="exists"):
        phash_model.save(path)  # never replaced silently
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["features.npz", "model.json"]
        with z.open("features.npz") as fh:
            np.load(fh, allow_pickle=False)  # readable without pickle


def rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as z:
        meta, blob = json.loads(z.read("model.json")), z.read("features.npz")
    change(meta)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("model.json", json.dumps(meta))
        z.writestr("features.npz", blob)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a clusterimg model file"),
    (lambda p: p.write_text("{}"), "not a clusterimg model file"),
    (lambda p: rewrite(p, p, lambda m: m.update(format_version=99)), "model format 99"),
    (lambda p: rewrite(p, p, lambda m: m.update(feature_version=1)), "features of version 1"),
    (lambda p: rewrite(p, p, lambda m: m.update(method="nosuch")), "does not have"),
    (lambda p: rewrite(p, p, lambda m: m["params"].update(hash_size=99)), "hash-size"),
    (lambda p: rewrite(p, p, lambda m: m["clusters"][0].pop("members")), "not a clusterimg model file"),
])
def test_a_corrupt_or_foreign_model_file_is_a_one_line_error(phash_model, tmp_path, damage, message):
    path = phash_model.save(tmp_path / "m.cim")
    damage(path)
    with pytest.raises(ClusterimgError, match=message) as e:
        load(path)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_labels_are_validated_and_nothing_changes_on_an_error(phash_model):
    phash_model.labels.clear()
    phash_model.set_labels({"0": "a", 1: ["b", "c"], "-1": []})
    assert phash_model.labels == {0: ["a"], 1: ["b", "c"], -1: []}
    for bad in ({"0": ["x"], "999": ["y"]}, {"zero": ["x"]}, {"0": [1]}, ["x"]):
        with pytest.raises(ClusterimgError):
            phash_model.set_labels(bad)
    assert phash_model.labels == {0: ["a"], 1: ["b", "c"], -1: []}
    phash_model.set_labels({"1": []})  # re-running replaces the named clusters only
    assert phash_model.labels == {0: ["a"], 1: [], -1: []}


def test_labels_from_a_reviewed_folder_tree(phash_model, tmp_path):
    phash_model.labels.clear()
    first, second = phash_model.clusters[0], phash_model.clusters[1]
    tree = tmp_path / "reviewed"
    (tree / "castles").mkdir(parents=True)
    (tree / "crabs").mkdir()
    shutil.copy(EXAMPLES / first.members[0], tree / "castles" / "renamed.jpg")  # matched by content
    shutil.copy(EXAMPLES / second.members[0], tree / "crabs" / "x.jpg")
    shutil.copy(EXAMPLES / second.members[1], tree / "crabs" / "y.jpg")
    shutil.copy(EXAMPLES / second.members[1], tree / "castles" / "z.jpg")  # outvoted 2:1
    write_photo(tree / "crabs" / "unknown.png", make_photo(99))  # matches no training image
    counts = phash_model.labels_from_folders(tree)
    assert counts == {"files": 5, "matched": 4, "unmatched": 1, "clusters": 2}
    assert phash_model.labels == {first.id: ["castles"], second.id: ["crabs"]}


class TinyVectors(VectorMethod):
    """A test backend: the mean colour of each image quarter."""

    name = "tinyvec"
    summary = "test"
    default_threshold = 0.9
    decode_gray = False

    def extract(self, image):
        h, w = image.shape[:2]
        quads = [image[:h // 2, :w // 2], image[:h // 2, w // 2:], image[h // 2:, :w // 2], image[h // 2:, w // 2:]]
        return np.concatenate([q.reshape(-1, 3).mean(axis=0) for q in quads]).astype(np.float32)


@pytest.fixture()
def tiny(monkeypatch):
    monkeypatch.setitem(available(), "tinyvec", TinyVectors)
    return TinyVectors()


def vector_result(model: dict) -> Result:
    """Two tight groups of vectors and one stray, as a vector model left them."""
    rng = np.random.default_rng(0)
    a, b = np.eye(4)[0], np.eye(4)[1]
    feats = {f"a{k}": (a + rng.normal(0, 0.05, 4)).astype(np.float32) for k in range(6)}
    feats.update({f"b{k}": (b + rng.normal(0, 0.05, 4)).astype(np.float32) for k in range(5)})
    feats["stray"] = np.array([0, 0, 1, 1], np.float32)
    clusters = [Cluster(sorted(p for p in feats if p[0] == g), f"{g}0", {}) for g in "ab"]
    return Result(clusters, ["stray"], [], len(feats), method="tinyvec", params={}, clustering=model,
                  features=feats)


@pytest.mark.parametrize("clustering", [{"model": "kmeans", "k": 2}, {"model": "dbscan", "eps": 0.05, "min_samples": 3}])
def test_vector_models_assign_by_centroid_or_core_point(tiny, tmp_path, clustering):
    result = vector_result(clustering)
    model = from_result(result)
    assert model.rule["name"] == {"kmeans": "centroid", "dbscan": "dbscan"}[clustering["model"]]
    paths = sorted(result.features)
    got = [cid for cid, _ in model.assign_features([result.features[p] for p in paths])]
    assert got == [0 if p[0] == "a" else 1 if p[0] == "b" else -1 for p in paths]  # training images: their own
    near_a = np.array([1.0, 0.03, 0.0, 0.0], np.float32)
    far = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
    assert [cid for cid, _ in model.assign_features([near_a, far])] == [0, -1]
    loaded = load(model.save(tmp_path / "v.cim"))
    assert loaded.assign_features([near_a, far]) == model.assign_features([near_a, far])
    assert loaded.rule == model.rule


def test_the_centroid_radius_is_learned_from_the_members(tiny):
    model = from_result(vector_result({"model": "kmeans", "k": 2}), radius_quantile=1.0)
    x = np.stack([model.features[p] for p in model.clusters[0].members]).astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = x.mean(axis=0) / np.linalg.norm(x.mean(axis=0))
    assert model.clusters[0].radius == pytest.approx(float(np.max(1 - x @ c)))
    # just beyond the radius: refused; just inside: accepted
    direction = np.array([0, 0, 0, 1.0]) - c @ np.array([0, 0, 0, 1.0]) * c
    direction /= np.linalg.norm(direction)
    for inside, cos in ((True, 1 - model.clusters[0].radius * 0.9), (False, 1 - model.clusters[0].radius * 1.1)):
        v = cos * c + np.sqrt(1 - cos**2) * direction
        assert (model.assign_features([v.astype(np.float32)])[0][0] == 0) is inside


def test_the_command_line_fit_label_assign(tmp_path):
    runner = CliRunner()
    path = tmp_path / "ex.cim"
    done = runner.invoke(main, ["fit", str(EXAMPLES), "--save", str(path), "--no-cache", "-j", "1", "-q"])
    assert done.exit_code == 0, done.output
    again = runner.invoke(main, ["fit", str(EXAMPLES), "--save", str(path), "--no-cache", "-q"])
    assert again.exit_code == 2 and "exists" in again.output
    model = load(path)
    crab = next(c.id for c in model.clusters if "crab.jpg" in c.members)
    (tmp_path / "labels.json").write_text(json.dumps({str(crab): ["crab", "sea"]}))
    assert runner.invoke(main, ["label", str(path), str(tmp_path / "labels.json")]).exit_code == 0
    (tmp_path / "bad.json").write_text(json.dumps({"77": ["x"]}))
    bad = runner.invoke(main, ["label", str(path), str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "cluster 77 does not exist" in bad.output
    shown = runner.invoke(main, ["label", str(path), "--show", "--json"])
    assert {r["id"]: r["labels"] for r in json.loads(shown.output)}[crab] == ["crab", "sea"]
    out = runner.invoke(main, ["assign", str(path), str(EXAMPLES / "crab_gray.jpg"), str(EXAMPLES / "italy.jpg"),
                               "--json", "-j", "1"])
    assert out.exit_code == 0
    answers = json.loads(out.output)
    assert [(a["cluster"], a["labels"]) for a in answers] == [(crab, ["crab", "sea"]), (-1, [])]
    broken = runner.invoke(main, ["assign", str(tmp_path / "labels.json"), str(EXAMPLES)])
    assert broken.exit_code == 2 and broken.output.count("\n") == 1


def test_a_vector_backend_clustered_by_the_graph_model_uses_the_threshold_rule(tiny, tmp_path):
    result = vector_result({})
    result.threshold = 0.98
    model = from_result(result)
    assert model.rule == {"name": "threshold", "threshold": 0.98}
    paths = sorted(result.features)
    expected = [0 if p[0] == "a" else 1 if p[0] == "b" else -1 for p in paths]
    assert [cid for cid, _ in model.assign_features([result.features[p] for p in paths])] == expected
    loaded = load(model.save(tmp_path / "g.cim"))
    assert [cid for cid, _ in loaded.assign_features([result.features[p] for p in paths])] == expected


def test_assignment_does_not_depend_on_the_worker_count(phash_model):
    files = sorted(EXAMPLES.glob("*.jpg"))[:12]
    one = [a.to_dict() for a in phash_model.assign(files, workers=1)]
    assert [a.to_dict() for a in phash_model.assign(files, workers=2)] == one
    assert [a.to_dict() for a in phash_model.assign(files[::-1], workers=2)] == one[::-1]


def test_dbscan_assigns_in_the_pca_space_it_clustered_in(tiny, tmp_path):
    # Two groups that differ in 2 of 10 dimensions; DBSCAN ran on PCA-2
    # vectors, so a new image off in the dropped dimensions still belongs
    # (compared in 10-D, as models did before, it was refused).
    rng = np.random.default_rng(1)
    a, b = np.zeros(10), np.zeros(10)
    a[0], b[1] = 1.0, 1.0
    feats = {f"a{k}": (a + rng.normal(0, 0.02, 10)).astype(np.float32) for k in range(8)}
    feats.update({f"b{k}": (b + rng.normal(0, 0.02, 10)).astype(np.float32) for k in range(8)})
    clusters = [Cluster(sorted(p for p in feats if p[0] == g), f"{g}0", {}) for g in "ab"]
    result = Result(clusters, [], [], len(feats), method="tinyvec", params={},
                    clustering={"model": "dbscan", "eps": 0.05, "min_samples": 3, "pca": 2}, features=feats)
    model = from_result(result)
    assert model.rule["projection"] is not None and model.rule["projection"][1].shape == (2, 10)
    off_axis = a.copy()
    off_axis[2:] = 0.15  # far from every member in 10-D (cosine distance 0.13 > eps), near group a in PCA-2
    assert 1 - (off_axis / np.linalg.norm(off_axis)) @ a > 0.05
    got = model.assign_features([off_axis.astype(np.float32), b.astype(np.float32)])
    assert [cid for cid, _ in got] == [0, 1]
    loaded = load(model.save(tmp_path / "d.cim"))
    assert loaded.assign_features([off_axis.astype(np.float32)]) == got[:1]
    assert np.array_equal(loaded.rule["projection"][1], model.rule["projection"][1])


def test_fit_on_a_folder_with_an_exact_copy(tmp_path):
    # An exact copy is not read twice, but it is a member: the model needs its feature too.
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("bison.jpg", "koala.jpg", "lemur.jpg", "lemur_crop.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    shutil.copy(EXAMPLES / "bison.jpg", folder / "bison_copy.jpg")
    path = tmp_path / "m.cim"
    done = CliRunner().invoke(main, ["fit", str(folder), "--method", "orb", "--save", str(path), "--no-cache", "-q"])
    assert done.exit_code == 0, done.output
    model = load(path)
    assert ["bison.jpg", "bison_copy.jpg"] in [c.members for c in model.clusters]
    assert [a.cluster for a in model.assign([folder / "bison_copy.jpg"])] == \
        [next(c.id for c in model.clusters if "bison.jpg" in c.members)]
