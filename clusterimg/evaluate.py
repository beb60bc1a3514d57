"""Score a clustering manifest against class labels (``clusterimg evaluate``).

Truth comes as a folder of class sub-folders (``birds/owl.png`` is in class
``birds``) or as a ``truth.json`` in ../shared/bench's format (``groups``: one
list of file names per class, named by ``classes`` when present; every
``singletons`` entry is a class of its own).

The scores are computed over the truth's images only. Like
../shared/bench/score.py, every image the manifest lists as an outlier or
skipped counts as a cluster of its own (a singleton), and so does every
truth image the manifest does not mention at all (counted as ``missing``);
manifest images the truth does not know are ignored (counted as
``unknown``). Singletons make purity look better (a singleton is always
pure), which is why ARI, NMI and the pairwise scores come first.

Metrics: adjusted Rand index (Hubert & Arabie), normalised mutual
information (arithmetic mean of the two entropies, natural log), pairwise
precision / recall / F1 over all pairs of images put in one cluster,
purity (each cluster's most common class, summed, over all images), and for
every class the F1 of the cluster that matches it best (2|C∩K| / (|C|+|K|)).
Standard library and numpy only.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path, PurePath

from clusterimg.errors import ClusterimgError, read_json_file

MATCHES = ("auto", "path", "name")


def load_truth(path: str | Path) -> dict[str, str]:
    """Image -> class: relative path (with '/') under a folder of class
    sub-folders, or file name from a truth.json. Raises ClusterimgError
    (exit 2) with a one-line message when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        from clusterimg.images import discover

        found, _ = discover(path)
        truth = {rel: rel.split("/", 1)[0] for rel in found if "/" in rel}
        if not truth:
            raise ClusterimgError(f"no images in class sub-folders of {path}", exit_code=2)
        return truth
    data = read_json_file(path, "truth")
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise ClusterimgError(f"{path} is not a truth.json (no \"groups\" list)", exit_code=2)
    names = data.get("classes") or []
    truth: dict[str, str] = {}
    try:
        for gi, group in enumerate(data["groups"]):
            label = str(names[gi]) if gi < len(names) else f"group{gi + 1}"
            for member in group:
                truth[str(member)] = label
        for member in data.get("singletons", []):
            truth[str(member)] = f"singleton:{member}"
    except TypeError:
        raise ClusterimgError(f"{path} is not a truth.json (groups must be lists of file names)", exit_code=2)
    return truth


def load_manifest(path: str | Path) -> dict:
    """A clusters.json; ClusterimgError (exit 2) with a one-line message if unreadable."""
    path = Path(path)
    data = read_json_file(path, "manifest")
    if not isinstance(data, dict) or not isinstance(data.get("clusters", []), list):
        raise ClusterimgError(f"{path} is not a clusterimg manifest (no \"clusters\" list)", exit_code=2)
    return data


def _entry_path(entry) -> str:
    return str(entry["path"] if isinstance(entry, dict) else entry)


def predicted(manifest: dict) -> dict[str, str]:
    """Manifest path -> cluster id; outliers and skipped files are singletons."""
    out: dict[str, str] = {}
    for ci, cluster in enumerate(manifest.get("clusters", [])):
        cid = str(cluster.get("id", ci)) if isinstance(cluster, dict) else str(ci)
        for member in (cluster.get("members", []) if isinstance(cluster, dict) else cluster):
            out[_entry_path(member)] = f"cluster:{cid}"
    for key in ("outliers", "skipped"):
        for entry in manifest.get(key, []):
            p = _entry_path(entry)
            out.setdefault(p, f"single:{p}")
    return out


def _keyed(mapping: dict[str, str], match: str) -> dict[str, str]:
    return mapping if match == "path" else {PurePath(k).name: v for k, v in mapping.items()}


def evaluate(manifest: dict, truth: dict[str, str], match: str = "auto") -> dict:
    """Scores of ``manifest`` against ``truth`` (image -> class).

    ``match``: ``path`` matches the manifest's relative paths to the truth's
    keys, ``name`` only the file names, ``auto`` (default) takes whichever of
    the two finds more of the truth's images.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}")
    pred_raw = predicted(manifest)
    if match == "auto":
        by_path = sum(1 for k in truth if k in pred_raw)
        by_name = len(set(_keyed(truth, "name")) & set(_keyed(pred_raw, "name")))
        match = "path" if by_path >= by_name else "name"
    true_of = _keyed(truth, match)
    pred_all = _keyed(pred_raw, match)
    missing = [k for k in true_of if k not in pred_all]
    unknown = [k for k in pred_all if k not in true_of]
    pred_of = {k: pred_all.get(k, f"missing:{k}") for k in true_of}

    table = Counter((true_of[k], pred_of[k]) for k in true_of)
    rows, cols = Counter(true_of.values()), Counter(pred_of.values())
    n = len(true_of)
    tp = sum(math.comb(c, 2) for c in table.values())
    true_pairs = sum(math.comb(c, 2) for c in rows.values())
    pred_pairs = sum(math.comb(c, 2) for c in cols.values())
    total = math.comb(n, 2)
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    expected = true_pairs * pred_pairs / total if total else 0.0
    max_index = (true_pairs + pred_pairs) / 2
    ari = (tp - expected) / (max_index - expected) if max_index != expected else 1.0

    def entropy(counts) -> float:
        return -sum(c / n * math.log(c / n) for c in counts if c)

    mutual = sum(c / n * math.log(n * c / (rows[t] * cols[p])) for (t, p), c in table.items()) if n else 0.0
    h_true, h_pred = entropy(rows.values()), entropy(cols.values())
    nmi = 1.0 if h_true == h_pred == 0 else (2 * mutual / (h_true + h_pred) if h_true + h_pred else 0.0)

    best_in_cluster: dict[str, int] = {}
    for (t, p), c in table.items():
        best_in_cluster[p] = max(best_in_cluster.get(p, 0), c)
    purity = sum(best_in_cluster.values()) / n if n else 1.0

    class_f1: dict[str, dict] = {}
    for t in sorted(rows):
        best = (0.0, "")
        for (tt, p), c in table.items():
            if tt == t:
                score = 2 * c / (rows[t] + cols[p])
                if score > best[0] or (score == best[0] and p < best[1]):
                    best = (score, p)
        class_f1[t] = {"f1": best[0], "size": rows[t], "cluster": best[1]}

    clusters = [p for p in cols if p.startswith("cluster:")]
    return {
        "match": match,
        "images": n,
        "classes": len(rows),
        "clusters": len(clusters),
        "singletons": sum(1 for p in cols if not p.startswith("cluster:")),
        "missing": len(missing),
        "unknown": len(unknown),
        "ari": ari,
        "nmi": nmi,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "purity": purity,
        "mean_class_f1": sum(v["f1"] for v in class_f1.values()) / len(class_f1) if class_f1 else 0.0,
        "class_f1": class_f1,
    }


def format_table(metrics: dict) -> list[str]:
    """The scores as lines of text for the terminal."""
    m = metrics
    lines = [
        f"images in truth: {m['images']} in {m['classes']} classes   clusters: {m['clusters']}   "
        f"singletons (outliers, skipped, missing): {m['singletons']}   matched by {m['match']}",
        f"ARI {m['ari']:.3f}   NMI {m['nmi']:.3f}   pairwise precision {m['precision']:.3f}   "
        f"recall {m['recall']:.3f}   F1 {m['f1']:.3f}   purity {m['purity']:.3f}",
        f"best-match F1 per class (mean {m['mean_class_f1']:.3f}):",
    ]
    width = max((len(c) for c in m["class_f1"]), default=5)
    for cls, v in m["class_f1"].items():
        where = v["cluster"].split(":", 1)[1] if v["cluster"].startswith("cluster:") else "a singleton"
        lines.append(f"  {cls:{width}s}  {v['f1']:.3f}  ({v['size']} images; best: {where})")
    if m["missing"]:
        lines.append(f"note: {m['missing']} truth images are not in the manifest (scored as singletons)")
    if m["unknown"]:
        lines.append(f"note: {m['unknown']} manifest images are not in the truth (ignored)")
    return lines
