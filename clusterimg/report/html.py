"""report.html: a static, self-contained page of a clustering run.

The page holds the run's header (rendered here, escaped) and all clusters,
outliers and skipped files as one JSON blob that a small inline script renders
page by page (50 clusters a page), with a path filter, keyboard paging and
keep/remove ticks that download as a decisions file for ``clusterimg dedupe``.

Thumbnails (JPEG, longest side at most 256 px, EXIF orientation applied by the
one decoder) go to ``OUT/thumbnails/``. Each is named after the image's
manifest path and its source's size and modification time, and
``thumbnails/index.json`` records its size (or why it could not be made), so a
thumbnail of an unchanged source is never made twice.
"""
from __future__ import annotations

import hashlib
import html
import json
import multiprocessing
import os
import re
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from clusterimg.atomic import atomic_file
from clusterimg.dedupe import Facts, choose, grain, input_file, load_manifest, read_journal
from clusterimg.output import write_json_atomic
from clusterimg.progress import no_bar
from clusterimg.report.assets import CSS, JS

REPORT = "report.html"
THUMBS = "thumbnails"
INDEX = "index.json"
THUMB_SIDE = 256
PAGE_SIZE = 50  # clusters a page at most...
PAGE_IMAGES = 400  # ...and images a page at most (unless one cluster is bigger)
MIN_FOR_POOL = 16
_THUMB_NAME = re.compile(r"^[0-9a-f]{20}_\d+_\d+\.jpg$")
# pictures a run may leave in OUT, shown in the header when present
PLOTS = ("threshold.png", "curve.png", "curve-pairs.png", "elbow.png", "selection.png", "map.png")


# -- thumbnails ---------------------------------------------------------------------


def thumb_name(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"{digest}_{size}_{mtime_ns}.jpg"


def make_thumbnail(src: str, dst: str) -> dict[str, Any]:
    """Write a <= 256 px JPEG of ``src`` to ``dst`` (atomically). Returns
    {"w", "h": the thumbnail's size, "ow", "oh": the image's (upright), "pb":
    the shares of its width and height inside flat borders (dedupe.picture_box)} or
    {"error": one-line reason}."""
    from PIL import Image

    from clusterimg.errors import ImageReadError
    from clusterimg.images import load_image

    try:
        with Image.open(src) as im:
            ow, oh = im.size
            orientation = im.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            ow, oh = oh, ow
        arr = load_image(src, max_side=THUMB_SIDE)
    except ImageReadError as e:
        return {"error": str(e)}
    except Exception as e:  # one odd file never stops the report
        return {"error": f"cannot read image: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    im = Image.fromarray(arr)
    with atomic_file(dst, suffix=".jpg", permissions=0o644) as f:
        im.save(f, "JPEG", quality=82, optimize=True)
    import numpy as np

    from clusterimg.dedupe import picture_box

    box = picture_box(np.asarray(im.convert("L")))
    return {"w": im.width, "h": im.height, "ow": ow, "oh": oh, "pb": [round(x, 4) for x in box]}


def _thumb_job(job: tuple[str, str]) -> dict[str, Any]:
    return make_thumbnail(*job)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    cv2.setNumThreads(1)


def _make_all(jobs: list[tuple[str, str]], workers: int, bar) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with bar(len(jobs)) as shown:
        if workers <= 1 or len(jobs) < MIN_FOR_POOL:
            for job in jobs:
                results.append(_thumb_job(job))
                shown.update(1)
            return results
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
        try:
            for item in pool.map(_thumb_job, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 8)))):
                results.append(item)
                shown.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return results


# -- the page -----------------------------------------------------------------------


def _href(src: Path, out: Path) -> str:
    """A relative URL from the report to ``src``, every special character
    percent-encoded (so no file name can become a ``javascript:`` URL)."""
    try:
        rel = os.path.relpath(src, out)
    except ValueError:  # another drive
        return src.resolve().as_uri()
    url = quote(Path(rel).as_posix(), safe="/")
    return url if url.startswith("../") else "./" + url


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _header(manifest: dict[str, Any], plots: list[str]) -> str:
    e = html.escape
    stats = manifest.get("stats", {})
    rows = [("input", manifest.get("input")), ("method", manifest.get("method")),
            ("threshold", manifest.get("threshold")), ("transfer", manifest.get("transfer")),
            ("created", manifest.get("created")), ("clusterimg", manifest.get("clusterimg"))]
    params = manifest.get("params") or {}
    if params:
        rows.append(("options", ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))))
    clustering = manifest.get("clustering") or {}
    if clustering:
        rows.append(("clustering", ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(clustering.items()))))
    if "seconds" in stats:
        rows.append(("time", f"{stats['seconds']:.1f} s to cluster"))
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(_fmt(v))}</dd>" for k, v in rows if v is not None)
    in_clusters = sum(len(c["members"]) for c in manifest.get("clusters", []))
    counts = [("images", stats.get("images", in_clusters + len(manifest.get("outliers", [])))),
              ("clusters", len(manifest.get("clusters", []))), ("images in clusters", in_clusters),
              ("outliers", len(manifest.get("outliers", []))), ("skipped", len(manifest.get("skipped", [])))]
    counts_html = "".join(
        f'<span id="count-{e(k.replace(" ", "-"))}"><b>{v}</b> {e(k)}</span>' for k, v in counts)
    plots_html = ""
    if plots:
        figs = "".join(f'<figure><img src="{e(quote(p))}" alt="{e(p)}"><figcaption>{e(p)}</figcaption></figure>'
                       for p in plots)
        plots_html = f'<div class="plots">{figs}</div>'
    return (f'<header class="run"><h1>clusterimg report</h1><dl>{dl}</dl>'
            f'<div class="counts">{counts_html}</div>{plots_html}</header>')


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
{header}
<nav class="bar" aria-label="pages">
<button id="tab-clusters" type="button" aria-pressed="true">Clusters</button>
<button id="tab-outliers" type="button" aria-pressed="false">Outliers</button>
<button id="tab-skipped" type="button" aria-pressed="false">Skipped</button>
<button id="prev" type="button" title="previous page (&larr; or p)">&larr; prev</button>
<span id="pageinfo"></span>
<button id="next" type="button" title="next page (&rarr; or n)">next &rarr;</button>
<input id="filter" type="search" placeholder="filter by path (/)" aria-label="filter by path">
<span id="decisioninfo"></span>
<button id="download" type="button" title="for: clusterimg dedupe OUT --decisions decisions.json">download decisions</button>
<button id="reset" type="button">reset ticks</button>
</nav>
<main id="view"><noscript>This report needs JavaScript to list the clusters.</noscript></main>
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def build_report(out_dir: Path, manifest: dict | None = None, *, workers: int = 1, bars=no_bar) -> Path:
    """Write ``OUT/report.html`` and ``OUT/thumbnails/`` for the run in
    ``out_dir`` (its clusters.json unless ``manifest`` is given); returns the
    page's path. Images are read from the output tree when there, else from
    the input folder."""
    out = Path(out_dir)
    if manifest is None:
        manifest = load_manifest(out)
    thumbs = out / THUMBS
    thumbs.mkdir(parents=True, exist_ok=True)
    index_path = thumbs / INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    except (OSError, ValueError):
        index = {}

    entries = [(m, c) for c in manifest.get("clusters", []) for m in c["members"]]
    entries += [(o, None) for o in manifest.get("outliers", [])]
    info: dict[str, dict[str, Any]] = {}  # manifest path -> facts for the page
    jobs: list[tuple[str, str]] = []
    journal = read_journal(out)
    trashed = {m["path"]: Path(m["dst"]) for m in journal["moves"]} if journal else {}
    for entry, _ in entries:
        path = entry["path"]
        src = out / entry["output"] if entry.get("output") else None
        if src is None or not src.is_file():
            src = input_file(manifest, out, path)
        if (src is None or not src.is_file()) and path in trashed:
            src = trashed[path]  # put away by `clusterimg dedupe`: shown from the trash
        try:
            st = src.stat() if src is not None else None
        except OSError:
            st = None
        if st is None:
            info[path] = {"src": src, "size": None, "mtime": None, "thumb": None, "reason": "file not found"}
            continue
        name = thumb_name(path, st.st_size, st.st_mtime_ns)
        info[path] = {"src": src, "size": st.st_size, "mtime": st.st_mtime_ns, "thumb": name}
        cached = index.get(name)
        if cached is None or ("error" not in cached and (not (thumbs / name).is_file() or "pb" not in cached)):
            jobs.append((str(src), str(thumbs / name)))

    made = _make_all(jobs, workers, bars("thumbnails"))
    for (_, dst), result in zip(jobs, made):
        index[Path(dst).name] = result
    live = {i["thumb"] for i in info.values() if i["thumb"]}
    index = {k: v for k, v in index.items() if k in live}
    for stale in thumbs.iterdir():  # thumbnails of files that changed or left the run (ours only)
        if _THUMB_NAME.match(stale.name) and stale.name not in live:
            stale.unlink(missing_ok=True)
    write_json_atomic(index_path, index)

    def facts(path: str) -> tuple:
        i = info[path]
        t = index.get(i["thumb"] or "", {}) if i["thumb"] else {}
        ok = "error" not in t and i["thumb"] is not None
        thumb = f"{THUMBS}/{i['thumb']}" if ok and t else None
        reason = i.get("reason") or t.get("error")
        href = _href(i["src"], out) if i["src"] is not None else None
        box = tuple(t.get("pb", (1.0, 1.0)))
        return thumb, t.get("w"), t.get("h"), t.get("ow"), t.get("oh"), i["size"], href, reason, box

    measured = []

    def grain_of(f: Facts):
        """What dedupe's noisy-copy rule reads, from the source file, kept in
        the thumbnail index (a full decode: worth not doing again)."""
        i = info[f.path]
        entry = index.get(i["thumb"] or "")
        if entry is not None and "gr" in entry:
            return tuple(entry["gr"]) if entry["gr"] else None
        found = grain(i["src"]) if i["src"] is not None else None
        if entry is not None and "error" not in entry:
            entry["gr"] = list(found) if found else None
            measured.append(f.path)
        return found

    clusters = []
    for c in manifest.get("clusters", []):
        rows = {m["path"]: facts(m["path"]) for m in c["members"]}
        known = [Facts(p, "", info[p]["size"] or 0, info[p]["mtime"] or 0, (r[3] or 0) * (r[4] or 0),
                       (r[3] or 0) / (r[4] or 1), r[8])
                 for p, r in rows.items()]
        kept = choose(known, "best", measure=grain_of) if known else None
        members = []
        for m in sorted(c["members"], key=lambda m: (m["path"] != c.get("representative"), m["path"])):
            thumb, w, h, ow, oh, size, href, reason, _ = rows[m["path"]]
            members.append([m["path"], m.get("score"), thumb, w, h, ow, oh, size, href,
                            m["path"] == kept, m["path"] == c.get("representative"), reason])
        clusters.append({"id": c["id"], "m": members})
    if measured:
        write_json_atomic(index_path, index)
    outliers = []
    for o in manifest.get("outliers", []):
        thumb, w, h, ow, oh, size, href, reason, _ = facts(o["path"])
        outliers.append([o["path"], thumb, w, h, ow, oh, size, href, reason])
    skipped = [[s.get("path"), s.get("reason")] for s in manifest.get("skipped", [])]
    data = {"created": manifest.get("created"), "input": _fmt(manifest.get("input")), "pageSize": PAGE_SIZE,
            "pageImages": PAGE_IMAGES,
            "clusters": clusters, "outliers": outliers, "skipped": skipped}

    plots = [p for p in PLOTS if (out / p).is_file()]
    plots += sorted(p.name for p in out.glob("*.png") if p.is_file() and p.name not in plots)
    title = f"clusterimg: {_fmt(manifest.get('input'))} ({manifest.get('method')})"
    page = PAGE.format(title=html.escape(title), css=CSS, header=_header(manifest, plots),
                       data=_json_for_script(data), js=JS)
    target = out / REPORT
    with atomic_file(target, binary=False, prefix=".tmp-", suffix=".html", permissions=0o644) as f:
        f.write(page)
    return target

