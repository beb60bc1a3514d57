"""A small run to build reports from: an input folder of generated photos and
a hand-written ``--transfer none`` manifest (the documented clusters.json
format), with hostile file names, an unreadable file and an EXIF-rotated one."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from conftest import make_photo, write_photo

# one path whose folders and name try to inject markup and end the data <script>
EVIL = 'evil<img src=x onerror="window.__pwned=1">/</script><script>window.__pwned=2</script>&amp;.jpg'
ROTATED = "rotated.jpg"  # stored 400x200 with EXIF orientation 6: upright it is 200x400
BROKEN = "broken.jpg"


def make_run(tmp_path: Path, clusters: int = 3, per: int = 2, size: tuple[int, int] = (120, 90)) -> tuple[Path, Path, dict]:
    root, out = tmp_path / "in", tmp_path / "out"
    out.mkdir(parents=True)
    manifest = {"clusterimg": "0.1.0", "method": "phash", "threshold": 0.8,
                "params": {"hash_size": 8, "batch_size": 1000},
                "input": str(root), "transfer": "none", "created": "2026-11-26T10:00:00+00:00",
                "clusters": [], "outliers": [], "skipped": [{"path": "notes.txt<b>bold</b>",
                                                             "reason": "not an image file (by its extension)"}],
                "stats": {"images": 0, "skipped": 1, "clusters": clusters, "outliers": 3, "seconds": 1.25}}
    for k in range(clusters):
        base = make_photo(k, size)
        members = []
        for v in range(per):
            rel = f"c{k:04d}/v{v}.jpg" if not (k == 0 and v == 1) else EVIL
            w, h = size
            write_photo(root / rel, base.resize((w - 8 * v, h - 6 * v)), quality=85)
            members.append(rel)
        members.sort()
        rep = members[-1]
        manifest["clusters"].append({
            "id": f"cluster_{k + 1:04d}", "representative": rep,
            "members": [{"path": p, "output": None, "score": 1.0 if p == rep else 0.875} for p in members]})
    im = make_photo(900, (400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    write_photo(root / ROTATED, im, quality=90, exif=exif.tobytes())
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    write_photo(root / "lonely.png", make_photo(901, (64, 48)))
    manifest["outliers"] = [{"path": p, "output": None} for p in (BROKEN, "lonely.png", ROTATED)]
    manifest["stats"]["images"] = clusters * per + 3
    (out / "clusters.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return root, out, manifest


def page_data(page: Path) -> dict:
    """The JSON blob the report's script renders."""
    text = page.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">')
    return json.loads(text[start:text.index("</script>", start)])
