"""Choosing a threshold by looking: score every pair of a random sample of the
folder once, then show for a ladder of thresholds what clustering would do,
and suggest one.

Scoring the sample goes through the pipeline (and so through the cache: a
`clusterimg run` afterwards reuses the features and verified pairs); the rest
is pure computation on (i, j, score) arrays, and text for the CLI to print.
Asking the user is the CLI's job.
"""
from __future__ import annotations

import os
import random
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from clusterimg import api
from clusterimg.errors import ClusterimgError
from clusterimg.options import flag_of
from clusterimg.clustering.threshold import UnionFind
from clusterimg.features.base import Method
from clusterimg.engine.scoring import PairScorer
from clusterimg.progress import no_bar
from clusterimg.engine.search import find_pairs

# Thresholds the table is computed for (the suggestion is chosen among them).
LADDER = tuple(round(0.05 + 0.01 * k, 2) for k in range(95))  # 0.05 .. 0.99
# Rows shown in the table: every SHOWN_STEP, plus the suggestion.
SHOWN_STEP = 0.05


def sample_paths(paths: Sequence[str], size: int, seed: int) -> list[str]:
    """A seeded uniform random sample of ``size`` paths (all of them if fewer), sorted.

    Uniform, not the smallest files: file size correlates with content
    (flat scans, screenshots), so a size-biased sample misjudges the folder.
    """
    if size >= len(paths):
        return sorted(paths)
    return sorted(random.Random(seed).sample(sorted(paths), size))


@dataclass(frozen=True)
class Row:
    """What clustering the sample at ``threshold`` gives, and its estimate for the folder."""

    threshold: float
    pairs: int  # pairs of the sample at or above the threshold
    images: int  # sample images in a cluster of two or more
    clusters: int  # clusters of two or more in the sample
    largest: int  # size of the largest cluster in the sample
    est_pairs: int  # scaled to the whole folder
    est_images: int
    est_clusters: int


def cluster_sizes(n: int, i: np.ndarray, j: np.ndarray) -> list[int]:
    """Sizes of the clusters of two or more that the pairs (i, j) chain together."""
    uf = UnionFind(n)
    uf.union_pairs(i, j)
    return [len(g) for g in uf.groups() if len(g) > 1]


def ladder_rows(
    n_sample: int, n_total: int, i: np.ndarray, j: np.ndarray, s: np.ndarray, ladder: Sequence[float] = LADDER
) -> list[Row]:
    """One row per threshold, highest threshold first.

    Estimates for the folder: pairs scale with the number of pairs
    (N(N-1) / n(n-1)); clustered images and clusters with the number of images
    (N / n). Both are rough when the sample is small next to the folder: a
    near-duplicate whose copies all fell outside the sample looks unclustered.
    """
    pair_scale = (n_total * (n_total - 1)) / max(1, n_sample * (n_sample - 1))
    image_scale = n_total / max(1, n_sample)
    rows = []
    for t in sorted(ladder, reverse=True):
        keep = s >= t - 1e-12
        sizes = cluster_sizes(n_sample, i[keep], j[keep])
        pairs, images, clusters = int(keep.sum()), sum(sizes), len(sizes)
        rows.append(Row(
            threshold=float(t), pairs=pairs, images=images, clusters=clusters, largest=max(sizes, default=0),
            est_pairs=round(pairs * pair_scale), est_images=round(images * image_scale),
            est_clusters=round(clusters * image_scale),
        ))
    return rows


# A run of the ladder counts as stable while its largest cluster grows by at
# most this factor, or by one image (small clusters grow in whole images),
# from the size it had where the run began.
STABLE_GROWTH = 1.25
# A clustering whose largest cluster holds more than this share of the sample
# (and more than 5 images) has chained unrelated images together: never suggested.
EXPLODED_SHARE = 0.25


def exploded_size(n_sample: int) -> float:
    return max(5.0, EXPLODED_SHARE * n_sample)


@dataclass(frozen=True)
class Suggestion:
    threshold: float
    reason: str


def stable_runs(rows: Sequence[Row]) -> list[list[Row]]:
    """Rows (highest threshold first) cut into runs over which the largest
    cluster grows by at most STABLE_GROWTH; rows without clusters are left out."""
    runs: list[list[Row]] = []
    for row in rows:
        if row.clusters == 0:
            continue
        if runs and row.largest <= max(STABLE_GROWTH * runs[-1][0].largest, runs[-1][0].largest + 1):
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def clear_level(default: float) -> float:
    """A score that only real near-duplicates reach: halfway between the
    backend's calibrated threshold and 1."""
    return default + (1.0 - default) / 2


def suggest(rows: Sequence[Row], n_sample: int, default: float | None = None) -> Suggestion | None:
    """The bottom of the widest stable run, or None without any pair.

    Why: lowering the threshold first completes the near-duplicate groups
    (the largest cluster stays about the size of a real group, over a wide
    band of thresholds), then unrelated images start to chain and the largest
    cluster grows step after step. The bottom of the widest stable band
    gathers the most near-duplicates before that chaining begins. The band is
    measured on the sample; a bigger folder chains a little sooner, which is
    why the band's bottom and not a point below it is suggested.

    With the backend's calibrated ``default``: a sample with no pair at the
    clear level (:func:`clear_level`) holds no clear duplicates, and its
    "stable band" is only unrelated images chaining slowly; then the
    suggestion is a safe one, above every pair of the sample and never below
    the default.
    """
    if default is not None:
        clear = clear_level(default)
        at_clear = [r for r in rows if r.threshold >= clear - 1e-9]
        if at_clear and at_clear[-1].pairs == 0:
            scored = [r.threshold for r in rows if r.pairs > 0]
            top = max(scored, default=0.0)
            safe = round(min(0.99, max(default, top + 0.01)), 2)
            reason = (f"no pair of the {n_sample} sampled images scores {clear:.2f} or more, so the sample "
                      "holds no clear duplicates; ")
            reason += (f"{safe:.2f} lies above every pair of the sample ({top:.2f} and below) and not below the "
                       f"method's calibrated {default:.2f}" if scored else f"the method's calibrated {default:.2f}")
            return Suggestion(safe, reason)
    exploded = exploded_size(n_sample)
    runs = [r for r in stable_runs(rows) if r[0].largest <= exploded]
    if not runs:
        return None

    def width(run: list[Row]) -> float:
        return run[0].threshold - run[-1].threshold

    best = max(runs, key=lambda r: (round(width(r), 6), -r[-1].threshold))  # ties: the lower band
    low, high = best[-1], best[0]
    # Where the bottom of the band clusters exactly like thresholds above it,
    # take the highest of those: the same result, with more margin.
    same = lambda r: (r.pairs, r.images, r.clusters) == (low.pairs, low.images, low.clusters)
    pick = next(r for r in best if same(r))
    below = next((r for r in rows if r.threshold < low.threshold), None)
    sizes = f"{high.largest}" if high.largest == low.largest else f"{high.largest}-{low.largest}"
    reason = (f"from {high.threshold:.2f} down to {low.threshold:.2f} the largest cluster stays at "
              f"{sizes} of the {n_sample} sampled images (the widest stable band)")
    if below is not None:
        reason += (f"; at {below.threshold:.2f} it grows to {below.largest}: unrelated images start to "
                   "chain together")
    if pick is not low:
        reason += f"; nothing changes between {pick.threshold:.2f} and {low.threshold:.2f}"
    return Suggestion(pick.threshold, reason)


# -- scoring the sample ------------------------------------------------------------


@dataclass
class SampleScores:
    paths: list[str]  # the sampled images that could be read, relative to the folder
    total: int  # images found in the whole folder
    i: np.ndarray  # pairs of positions in ``paths`` ...
    j: np.ndarray
    s: np.ndarray  # ... and their scores, for every pair at or above the ladder's floor


def score_sample(
    root: Path, method: Method, size: int, seed: int, *, recursive: bool = True, workers: int | None = None,
    exhaustive: bool = False, cache=True, bars=no_bar, cache_max_size: int | None = None,
) -> SampleScores:
    """Read a random sample of ``root`` and score its pairs down to the
    lowest threshold of the ladder (the backend's candidate search proposes
    the pairs unless ``exhaustive``). ``cache`` as in :func:`clusterimg.cluster`."""
    roots = api.resolve_inputs(root)
    paths, _ = api.find_images(roots, recursive=recursive)
    if len(paths) < 2:
        raise ClusterimgError(f"{root} holds {len(paths)} image(s): nothing to compare", exit_code=2)
    chosen = sample_paths(paths, size, seed)
    method.prepare([str(roots[0].source(p)) for p in chosen])
    with api.cache_for(method, cache, max_size=cache_max_size) as store:
        images = api.read_images(method, chosen, roots[0].source, workers=workers or os.cpu_count() or 1,
                                 cache=store, bar=bars("reading sample"))
        scorer = PairScorer(method, images.files, store)
        stacked = method.stack(images.features)
        n = len(images.features)
        i, j, s = find_pairs(method, stacked, n, min(LADDER), exhaustive=exhaustive,
                             score_fn=scorer.score_fn(stacked, range(n)), bar=bars("pairs (sample)"))
    return SampleScores(images.paths, len(paths), i, j, s)


# -- borderline pairs ---------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    score: float


def borderline_pairs(sample: SampleScores, threshold: float, count: int) -> tuple[list[Pair], list[Pair]]:
    """The ``count`` pairs scoring just at/above ``threshold`` and just below it
    (closest first): what the choice of threshold actually decides."""
    order = np.lexsort((sample.j, sample.i, sample.s))  # by score, ties by position: deterministic
    s = sample.s[order]
    cut = int(np.searchsorted(s, threshold - 1e-12, side="left"))
    make = lambda k: Pair(sample.paths[sample.i[order[k]]], sample.paths[sample.j[order[k]]], float(s[k]))
    above = [make(k) for k in range(cut, min(cut + count, len(s)))]
    below = [make(k) for k in range(cut - 1, max(cut - 1 - count, -1), -1)]
    return above, below


# -- text for the terminal ----------------------------------------------------------


def shown_rows(rows: Sequence[Row], n_sample: int, suggestion: Suggestion | None) -> list[Row]:
    """The rows worth a line: every SHOWN_STEP from the first clusters down to
    the first exploded clustering, and the suggestion."""
    exploded = exploded_size(n_sample)
    out = []
    for row in rows:
        on_step = abs(row.threshold / SHOWN_STEP - round(row.threshold / SHOWN_STEP)) < 1e-6
        if on_step or (suggestion is not None and abs(row.threshold - suggestion.threshold) < 1e-9):
            out.append(row)
    first = next((k for k, r in enumerate(out) if r.clusters > 0), 0)
    last = next((k for k, r in enumerate(out) if r.largest > exploded), len(out) - 1)
    return out[max(0, first - 1): last + 1]


def table_lines(rows: Sequence[Row], n_sample: int, total: int, suggestion: Suggestion | None,
                chart: bool = False, width: int = 30) -> list[str]:
    """The ladder as a table; with ``chart``, a bar of the images that would be
    clustered (estimated, whole folder) on each line: the curve, in text."""
    shown = shown_rows(rows, n_sample, suggestion)
    head = (f"{'threshold':>9}  {'similar pairs':>13}  {'images clustered':>16}  {'clusters':>8}  "
            f"{'largest (sample)':>16}")
    lines = [f"Estimated for all {total} images from a sample of {n_sample}:", head]
    for row in shown:
        mark = "  <- suggested" if suggestion is not None and abs(row.threshold - suggestion.threshold) < 1e-9 else ""
        bar = ""
        if chart:
            bar = "  " + "#" * round(width * min(row.est_images, total) / max(1, total))
        lines.append(f"{row.threshold:>9.2f}  {row.est_pairs:>13}  {row.est_images:>16}  {row.est_clusters:>8}  "
                     f"{row.largest:>16}{bar}{mark}")
    return lines


def run_command(folder: str, method: str, threshold: float, options: dict, *, recursive: bool = True,
                exhaustive: bool = False, cache_dir: str | None = None, no_cache: bool = False) -> str:
    """The `clusterimg run` command line for this choice, shell-quoted."""
    words = ["clusterimg", "run", folder, "--method", method, "--threshold", f"{threshold:g}"]
    for name, value in sorted(options.items()):
        if value is None:
            continue
        flag = flag_of(name)
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    if not recursive:
        words.append("--no-recursive")
    if exhaustive:
        words.append("--exhaustive")
    if no_cache:
        words.append("--no-cache")
    elif cache_dir is not None:
        words += ["--cache-dir", cache_dir]
    return " ".join(shlex.quote(w) for w in words)


# -- pictures (optional extra) -------------------------------------------------------


def plot_curve(path: Path, rows: Sequence[Row], total: int, suggestion: Suggestion | None,
               chosen: float | None = None) -> None:
    """The curve as a picture: images clustered and clusters (estimated) against threshold."""
    from clusterimg.maps import require_matplotlib

    fig = require_matplotlib()(figsize=(8, 4.5))
    ax = fig.subplots()
    t = [r.threshold for r in rows]
    ax.plot(t, [r.est_images for r in rows], label="images clustered")
    ax.plot(t, [r.est_clusters for r in rows], label="clusters")
    if suggestion is not None:
        ax.axvline(suggestion.threshold, color="tab:red", linestyle="--",
                   label=f"suggested {suggestion.threshold:.2f}")
    if chosen is not None and (suggestion is None or abs(chosen - suggestion.threshold) > 1e-9):
        ax.axvline(chosen, color="tab:green", linestyle=":", label=f"chosen {chosen:.2f}")
    ax.set_xlabel("threshold")
    ax.set_ylabel(f"estimated, of {total} images")
    ax.set_ylim(0, total * 1.05)
    ax.invert_xaxis()  # read left to right as the threshold is lowered
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise ClusterimgError(f"cannot write {path}: {e.strerror or e}")


def contact_strip(path: Path, root: Path, above: Sequence[Pair], below: Sequence[Pair], side: int = 128) -> None:
    """One line per borderline pair: two thumbnails with their names under
    them and the score, pairs just above the threshold first (Pillow only)."""
    from PIL import Image, ImageDraw

    from clusterimg.images import load_image

    pairs = [(p, True) for p in above] + [(p, False) for p in below]
    if not pairs:
        return
    label_w, name_h = 150, 14
    sheet = Image.new("RGB", (2 * side + label_w + 12, len(pairs) * (side + name_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (pair, joined) in enumerate(pairs):
        y = row * (side + name_h + 8) + 3
        for col, rel in enumerate((pair.a, pair.b)):
            try:
                thumb = Image.fromarray(load_image(root / rel, max_side=side))
                sheet.paste(thumb, (4 + col * (side + 4), y))
            except Exception:  # an unreadable file shows as an empty square
                pass
            name = Path(rel).name
            draw.text((4 + col * (side + 4), y + side + 2), name if len(name) <= 22 else name[:10] + "…" + name[-10:],
                      fill="black")
        draw.text((2 * side + 16, y + side // 2 - 10),
                  f"{pair.score:.3f}\n{'joined' if joined else 'not joined'}", fill="black")
    try:
        sheet.save(path)
    except OSError as e:
        raise ClusterimgError(f"cannot write {path}: {e.strerror or e}")
