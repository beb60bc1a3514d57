"""report.html: content, escaping, pagination data, thumbnails made once."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from clusterimg import dedupe as dd
from clusterimg.cli import main
from clusterimg.report import build_report
from clusterimg.report import html as report_html

from report_fixture import BROKEN, EVIL, ROTATED, make_run, page_data


def thumbs_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "thumbnails").glob("*.jpg")}


def test_every_cluster_member_outlier_and_skip_is_on_the_page(tmp_path):
    root, out, manifest = make_run(tmp_path, clusters=4, per=3)
    page = build_report(out)
    assert page == out / "report.html"
    text = page.read_text(encoding="utf-8")
    for name, value in (("images", 15), ("clusters", 4), ("images-in-clusters", 12), ("outliers", 3),
                        ("skipped", 1)):
        assert re.search(rf'id="count-{name}"><b>{value}</b>', text), name
    data = page_data(page)
    rule_keeps = dict(dd.plan_dedupe(manifest, out).kept)  # cluster -> the member `dedupe` keeps
    assert [c["id"] for c in data["clusters"]] == [c["id"] for c in manifest["clusters"]]
    for shown, c in zip(data["clusters"], manifest["clusters"]):
        assert sorted(m[0] for m in shown["m"]) == sorted(m["path"] for m in c["members"])
        assert shown["m"][0][0] == c["representative"] and shown["m"][0][10] is True  # representative first
        assert sum(1 for m in shown["m"] if m[10]) == 1
        assert [m[1] for m in shown["m"]] == [1.0] + [0.875] * (len(c["members"]) - 1)
        kept = [m[0] for m in shown["m"] if m[9]]  # ticked "keep" by the dedupe's default rule
        assert kept == [rule_keeps[c["id"]]]
    assert [o[0] for o in data["outliers"]] == [BROKEN, "lonely.png", ROTATED]
    assert data["skipped"] == [["notes.txt<b>bold</b>", "not an image file (by its extension)"]]
    assert data["pageSize"] == report_html.PAGE_SIZE
    assert data["created"] == manifest["created"]
    assert "phash" in text and "hash_size=8" in text and "1.2 s to cluster" in text


def test_file_names_cannot_inject_markup(tmp_path):
    root, out, manifest = make_run(tmp_path)
    manifest["input"] = str(root) + "<script>window.__pwned=3</script>"
    manifest["input_abs"] = str(root)  # the lead's manifests carry it; it wins over "input"
    text = build_report(out, manifest).read_text(encoding="utf-8")
    assert "<img src=x" not in text and "<script>window.__pwned" not in text and "<b>bold" not in text
    assert "&lt;script&gt;window.__pwned=3&lt;/script&gt;" in text  # the header escapes
    # exactly the page's own two scripts, and the data round-trips exactly
    assert len(re.findall(r"<script\b", text)) == 2 and text.count("</script>") == 2
    data = page_data(out / "report.html")
    member = next(m for m in data["clusters"][0]["m"] if m[0] == EVIL)
    assert member[2].startswith("thumbnails/") and re.fullmatch(r"thumbnails/[0-9a-f_]+\.jpg", member[2])
    href = member[8]
    assert href.startswith("../in/") and ":" not in href and "<" not in href and '"' not in href
    # the script builds the page with textContent and properties only
    assert "innerHTML" not in report_html.JS and "insertAdjacentHTML" not in report_html.JS
    assert "document.write" not in report_html.JS


def test_thumbnails_small_upright_and_not_remade(tmp_path, monkeypatch):
    root, out, manifest = make_run(tmp_path, size=(640, 480))
    build_report(out)
    data = page_data(out / "report.html")
    made = thumbs_of(out)
    assert len(made) == 3 * 2 + 2  # every readable image; not the broken one
    for name in made:
        with Image.open(out / "thumbnails" / name) as im:
            assert max(im.size) <= 256 and im.format == "JPEG"
    rotated = next(o for o in data["outliers"] if o[0] == ROTATED)
    assert (rotated[2], rotated[3]) == (128, 256)  # EXIF orientation applied: portrait
    assert (rotated[4], rotated[5]) == (200, 400)
    broken = next(o for o in data["outliers"] if o[0] == BROKEN)
    assert broken[1] is None and broken[8]  # no picture, a reason instead
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "thumbnails").glob("*.jpg")}

    calls = []
    real = report_html.make_thumbnail
    monkeypatch.setattr(report_html, "make_thumbnail", lambda s, d: calls.append(s) or real(s, d))
    build_report(out)
    assert calls == []  # unchanged sources: nothing remade (the broken one is remembered too)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "thumbnails").glob("*.jpg")} == stamps

    changed = root / "c0001" / "v0.jpg"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(changed)
    build_report(out)
    assert calls == [str(changed)]  # only the changed file, and its stale thumbnail is gone
    assert len(thumbs_of(out)) == len(made)
    assert set(thumbs_of(out)) != set(made)


def test_parallel_thumbnails_give_the_same_report(tmp_path):
    root, out, _ = make_run(tmp_path, clusters=10, per=2)
    build_report(out, workers=2)
    page, thumbs = (out / "report.html").read_bytes(), thumbs_of(out)
    assert len(thumbs) == 22
    for p in (out / "thumbnails").iterdir():
        p.unlink()
    build_report(out, workers=1)
    assert (out / "report.html").read_bytes() == page
    assert thumbs_of(out) == thumbs


def test_images_come_from_the_output_tree_when_there(photo_folder, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(photo_folder), "--out", str(out), "--no-cache", "-q"]).exit_code == 0
    result = runner.invoke(main, ["report", str(out), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "Report written to" in result.output
    data = page_data(out / "report.html")
    manifest = json.loads((out / "clusters.json").read_text())
    assert len(data["clusters"]) == len(manifest["clusters"]) > 0
    for c, shown in zip(manifest["clusters"], data["clusters"]):
        outputs = {m["path"]: m["output"] for m in c["members"]}
        for m in shown["m"]:
            assert m[8] == "./" + outputs[m[0]]  # links into the output tree
            assert m[2] is not None


def test_input_as_given_is_found_without_input_abs(tmp_path, monkeypatch):
    root, out, manifest = make_run(tmp_path)
    manifest["input"] = "in"  # relative, as typed in tmp_path
    monkeypatch.chdir(tmp_path / "out")
    build_report(out, manifest)
    assert all(m[2] for c in page_data(out / "report.html")["clusters"] for m in c["m"])


def test_plots_in_the_output_folder_are_shown(tmp_path):
    root, out, _ = make_run(tmp_path)
    Image.new("RGB", (40, 30), "white").save(out / "map.png")
    text = build_report(out).read_text(encoding="utf-8")
    assert '<img src="map.png"' in text


def test_report_of_a_folder_without_manifest_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a clusterimg output folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "report.html").exists()


def test_after_a_dedupe_the_moved_images_are_shown_from_the_trash(tmp_path):
    root, out, manifest = make_run(tmp_path)
    plan = dd.run_dedupe(out)
    assert plan.moves
    build_report(out)
    shown = {m[0]: m for c in page_data(out / "report.html")["clusters"] for m in c["m"]}
    for move in plan.moves:
        assert shown[move.path][2] is not None  # a thumbnail, made from the trash
        assert shown[move.path][8].startswith("./duplicates/")
