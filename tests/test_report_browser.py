"""report.html in a real browser: headless Chromium loads it from file://,
its script renders the clusters with no console error, paging, filter and
keyboard work, the ticks become a decisions file that dedupe accepts, and the
screenshot is not blank. Skipped only when no Chromium is installed
(.ci/run installs Debian's `chromium`)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from clusterimg import dedupe as dd
from clusterimg.report import build_report

from chromium_cdp import Chromium, find_chromium
from report_fixture import EVIL, make_run

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no chromium binary (apt-get install chromium; .ci/run does)")

VISIBLE_IMAGES_LOADED = ("Array.from(document.images).every(i => i.getBoundingClientRect().top > innerHeight"
                         " || (i.complete && i.naturalWidth > 0))")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    root, out, manifest = make_run(tmp, clusters=120, per=2)
    page = build_report(out, workers=2)
    return page, manifest, out


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1280, height=1400) as b:
        yield b


def open_page(browser, page):
    p = browser.open(page.as_uri())
    p.wait_for("document.body.dataset.ready === '1'")
    p.wait_for(VISIBLE_IMAGES_LOADED)
    return p


def text(p, selector):
    return p.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


def count(p, selector):
    return p.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")


def test_page_renders_clusters_pages_and_counts_without_errors(browser, report):
    page, manifest, _ = report
    p = open_page(browser, page)
    assert count(p, "section.cluster") == 50  # first page of 120 clusters
    assert p.evaluate("document.querySelector('section.cluster').id") == "cluster_0001"
    assert text(p, "#pageinfo") == "page 1 / 3 \u00b7 120 clusters"
    assert count(p, "section.cluster figure.member") == 100
    assert count(p, "section.cluster img") == 100
    assert count(p, "figure.member.rep") == 50
    assert text(p, "#count-clusters") == "120 clusters"
    assert text(p, "#count-outliers") == "3 outliers"
    assert text(p, "#decisioninfo") == "120 kept, 120 to put away"
    # the hostile file name is text, nothing of it ran
    assert p.evaluate("window.__pwned === undefined")
    paths = p.evaluate("Array.from(document.querySelectorAll('#cluster_0001 .path')).map(e => e.textContent)")
    assert EVIL in paths
    assert browser.errors == [], browser.errors


def test_keyboard_filter_and_tabs(browser, report):
    page, _, _ = report
    p = open_page(browser, page)
    p.key("ArrowRight", key_code=39)
    p.wait_for("document.body.dataset.page === '2'")
    assert p.evaluate("document.querySelector('section.cluster').id") == "cluster_0051"
    p.key("n", "KeyN", 78)
    p.wait_for("document.body.dataset.page === '3'")
    assert count(p, "section.cluster") == 20
    p.key("ArrowLeft", key_code=37)
    p.wait_for("document.body.dataset.page === '2'")
    p.evaluate("(() => { const f = document.getElementById('filter'); f.value = 'C0100/';"
               " f.dispatchEvent(new Event('input')); })()")
    p.wait_for("document.querySelectorAll('section.cluster').length === 1")
    assert p.evaluate("document.querySelector('section.cluster').id") == "cluster_0101"
    assert text(p, "#pageinfo") == "page 1 / 1 \u00b7 1 clusters matching"
    p.evaluate("(() => { const f = document.getElementById('filter'); f.value = '';"
               " f.dispatchEvent(new Event('input')); document.getElementById('tab-outliers').click(); })()")
    p.wait_for("document.querySelectorAll('section.outliers figure').length === 3")
    assert count(p, "section.outliers img") == 2  # the unreadable file gets a note, not a broken image
    assert "cannot" in text(p, "section.outliers .missing")
    p.evaluate("document.getElementById('tab-skipped').click()")
    p.wait_for("document.querySelectorAll('table.skipped td').length === 2")
    assert text(p, "table.skipped td") == "notes.txt<b>bold</b>"
    assert count(p, "table.skipped b") == 0
    assert browser.errors == [], browser.errors


def test_ticks_download_as_decisions_that_dedupe_accepts(browser, report):
    page, manifest, out = report
    p = open_page(browser, page)
    p.evaluate("document.querySelector('#cluster_0002 figure.removed input[type=checkbox]').click()")
    p.evaluate("document.querySelector('#cluster_0003 figure:not(.removed) input[type=checkbox]').click()")
    decisions = p.evaluate("window.clusterimgDecisions()")
    assert text(p, "#decisioninfo") == "120 kept, 120 to put away"
    assert decisions["format"] == "clusterimg-decisions"
    assert decisions["manifest_created"] == manifest["created"]
    both = [m["path"] for m in manifest["clusters"][1]["members"]]
    assert set(both) <= set(decisions["keep"])  # cluster 2: both kept now
    assert not set(m["path"] for m in manifest["clusters"][2]["members"]) & set(decisions["keep"])
    path = out / "decisions.json"
    path.write_text(json.dumps(decisions))
    plan = dd.plan_dedupe(manifest, out, decisions=dd.load_decisions(path))
    assert sorted(m.path for m in plan.moves) == sorted(decisions["remove"])
    assert len(plan.moves) == 120 and plan.warnings == ["cluster_0003: the decisions remove every member; "
                                                        "all go to the trash"]
    p.evaluate("document.getElementById('reset').click()")
    assert browser.errors == [], browser.errors


def test_screenshot_is_not_blank(browser, report, tmp_path):
    page, _, _ = report
    p = open_page(browser, page)
    png = p.screenshot()
    (tmp_path / "report.png").write_bytes(png)
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.size == (1280, 1400)
    arr = np.asarray(im)
    assert arr.std() > 20  # text, boxes and photos, not one flat colour
    packed = (arr[..., 0].astype(np.int32) << 16) | (arr[..., 1].astype(np.int32) << 8) | arr[..., 2]
    assert len(np.unique(packed)) > 1000  # thumbnails were drawn, not just text on white
    assert browser.errors == [], browser.errors


def test_the_error_check_sees_console_errors_exceptions_and_broken_images(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img src="missing.jpg"><script>console.error("boom");</script>'
                   '<script>null.x;</script></body></html>')
    seen = len(browser.errors)
    p = browser.open(bad.as_uri())
    p.wait_for("document.readyState === 'complete'")
    new = browser.errors[seen:]
    del browser.errors[seen:]
    assert any("boom" in e for e in new), new
    assert any(e.startswith("exception:") for e in new), new
    assert any("missing.jpg" in e for e in new), new


def test_pages_of_big_clusters_are_cut_by_image_count(browser, tmp_path, monkeypatch):
    from clusterimg.report import html as report_html

    root, out, _ = make_run(tmp_path, clusters=7, per=3)
    monkeypatch.setattr(report_html, "PAGE_IMAGES", 7)
    p = open_page(browser, build_report(out))
    assert text(p, "#pageinfo") == "page 1 / 4 \u00b7 7 clusters"  # 2 clusters of 3 images a page
    assert count(p, "section.cluster") == 2
    p.key("ArrowRight", key_code=39)
    p.wait_for("document.body.dataset.page === '2'")
    assert p.evaluate("Array.from(document.querySelectorAll('section.cluster')).map(s => s.id)") == [
        "cluster_0003", "cluster_0004"]
    assert browser.errors == [], browser.errors
