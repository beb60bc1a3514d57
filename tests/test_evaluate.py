"""evaluate: metrics of tiny labelings worked out by hand, truth loading, the CLI."""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from clusterimg.cli import main
from clusterimg.errors import ClusterimgError
from clusterimg.evaluate import evaluate, format_table, load_truth

# Six images. Truth: A = {1, 2, 3}, B = {4, 5}, C = {6}.
# Prediction: P = {1, 2}, Q = {3, 4, 5}, and 6 an outlier (a singleton).
TRUTH = {"1.jpg": "A", "2.jpg": "A", "3.jpg": "A", "4.jpg": "B", "5.jpg": "B", "6.jpg": "C"}
MANIFEST = {
    "clusters": [
        {"id": 1, "members": [{"path": "1.jpg"}, {"path": "2.jpg"}]},
        {"id": 2, "members": [{"path": "3.jpg"}, "4.jpg", {"path": "5.jpg"}]},
    ],
    "outliers": [{"path": "6.jpg"}],
    "skipped": [],
}


def test_hand_computed_scores():
    m = evaluate(MANIFEST, TRUTH)
    # Contingency: A&P 2, A&Q 1, B&Q 2, C&{6} 1.
    # Pairs together in both: C(2,2) + C(1,2) + C(2,2) = 2; true pairs C(3,2) + C(2,2) = 4;
    # predicted pairs C(2,2) + C(3,2) = 4; all pairs C(6,2) = 15.
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(0.5)
    # ARI = (2 - 4*4/15) / ((4+4)/2 - 4*4/15) = (14/15) / (44/15) = 7/22
    assert m["ari"] == pytest.approx(7 / 22)
    # NMI: both labelings have cluster sizes (3, 2, 1): H = -(1/2 ln 1/2 + 1/3 ln 1/3 + 1/6 ln 1/6).
    # I = 2/6 ln(6*2/(3*2)) + 1/6 ln(6*1/(3*3)) + 2/6 ln(6*2/(2*3)) + 1/6 ln(6/(1*1))
    #   = 2/3 ln 2 + 1/6 ln(2/3) + 1/6 ln 6 = 2/3 ln 2 + 1/6 ln 4 = ln 2.
    h = -(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6)
    assert m["nmi"] == pytest.approx(math.log(2) / h)
    # Purity: P's majority 2 (A), Q's 2 (B), {6} 1 -> 5/6.
    assert m["purity"] == pytest.approx(5 / 6)
    # Best-match F1: A vs P = 2*2/(3+2) = 0.8 (vs Q only 2*1/6); B vs Q = 2*2/(2+3) = 0.8; C vs {6} = 1.
    assert m["class_f1"]["A"]["f1"] == pytest.approx(0.8)
    assert m["class_f1"]["A"]["cluster"] == "cluster:1"
    assert m["class_f1"]["B"]["f1"] == pytest.approx(0.8)
    assert m["class_f1"]["C"]["f1"] == pytest.approx(1.0)
    assert m["mean_class_f1"] == pytest.approx(2.6 / 3)
    assert (m["images"], m["classes"], m["clusters"], m["singletons"]) == (6, 3, 2, 1)
    lines = format_table(m)
    assert "ARI 0.318" in lines[1] and "NMI" in lines[1]


def test_perfect_and_all_singletons():
    perfect = {"clusters": [{"id": 1, "members": ["1.jpg", "2.jpg", "3.jpg"]},
                            {"id": 2, "members": ["4.jpg", "5.jpg"]}], "outliers": ["6.jpg"]}
    m = evaluate(perfect, TRUTH)
    assert m["ari"] == pytest.approx(1.0) and m["nmi"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
    assert m["purity"] == 1.0 and m["mean_class_f1"] == 1.0
    # Everything an outlier: no predicted pair, so precision 1 (nothing wrong), recall 0, ARI 0.
    m = evaluate({"clusters": [], "outliers": sorted(TRUTH)}, TRUTH)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 0.0, 0.0)
    assert m["ari"] == pytest.approx(0.0)


def test_missing_images_are_singletons_and_unknown_ignored():
    manifest = {"clusters": [{"id": 1, "members": ["1.jpg", "2.jpg", "3.jpg", "x.jpg"]},
                             {"id": 2, "members": ["4.jpg", "5.jpg"]}], "outliers": []}
    m = evaluate(manifest, TRUTH)  # 6.jpg missing, x.jpg unknown: still a perfect score
    assert (m["missing"], m["unknown"]) == (1, 1)
    assert m["ari"] == pytest.approx(1.0)
    assert any("not in the manifest" in line for line in format_table(m))


def test_match_by_name_or_path():
    truth = {"birds/a.png": "birds", "birds/b.png": "birds", "fish/c.png": "fish", "fish/d.png": "fish"}
    by_path = {"clusters": [{"id": 1, "members": ["birds/a.png", "birds/b.png"]},
                            {"id": 2, "members": ["fish/c.png", "fish/d.png"]}]}
    assert evaluate(by_path, truth, match="path")["ari"] == pytest.approx(1.0)
    flat = {"clusters": [{"id": 1, "members": ["out/a.png", "out/b.png"]},
                         {"id": 2, "members": ["out/c.png", "out/d.png"]}]}
    assert evaluate(flat, truth, match="path")["missing"] == 4
    m = evaluate(flat, truth)  # auto picks names here
    assert m["match"] == "name" and m["ari"] == pytest.approx(1.0)


def test_load_truth_folder_and_json(tmp_path):
    for rel in ["birds/a.png", "birds/b.png", "fish/c.png", "loose.png"]:
        (tmp_path / "set" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / rel).write_bytes(b"x")
    assert load_truth(tmp_path / "set") == {"birds/a.png": "birds", "birds/b.png": "birds", "fish/c.png": "fish"}
    tj = tmp_path / "truth.json"
    tj.write_text(json.dumps({"groups": [["a.png", "b.png"], ["c.png"]], "singletons": ["d.png"],
                              "classes": ["birds", "fish"]}))
    assert load_truth(tj) == {"a.png": "birds", "b.png": "birds", "c.png": "fish", "d.png": "singleton:d.png"}
    tj.write_text("{not json")
    with pytest.raises(ClusterimgError) as e:
        load_truth(tj)
    assert e.value.exit_code == 2


def test_cli_evaluate(tmp_path):
    man = tmp_path / "clusters.json"
    man.write_text(json.dumps(MANIFEST))
    tj = tmp_path / "truth.json"
    tj.write_text(json.dumps({"groups": [["1.jpg", "2.jpg", "3.jpg"], ["4.jpg", "5.jpg"]], "singletons": ["6.jpg"]}))
    runner = CliRunner()
    r = runner.invoke(main, ["evaluate", str(man), "--truth", str(tj)])
    assert r.exit_code == 0, r.output
    assert "ARI 0.318" in r.output
    r = runner.invoke(main, ["evaluate", str(man), "--truth", str(tj), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["ari"] == pytest.approx(7 / 22)
    for args in ([str(tmp_path / "nope.json"), "--truth", str(tj)],
                 [str(tj.with_name("bad.json")), "--truth", str(tj)],
                 [str(man), "--truth", str(tmp_path / "none")]):
        tj.with_name("bad.json").write_text("[1, 2")
        r = runner.invoke(main, ["evaluate", *args])
        assert r.exit_code == 2
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
