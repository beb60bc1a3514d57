"""Keep the best image of each cluster and put the others away, with undo.

Nothing is ever deleted or overwritten. The images not kept are *moved* into a
trash folder (default ``OUT/duplicates/``) under their relative paths. Before
the first move the whole plan goes to the journal ``OUT/.clusterimg-dedupe.json``
(every source, its destination, size and modification time); each move is an
idempotent step (the output transfer's ``move``), so a dedupe stopped at any
point (Ctrl-C, a crash, SIGKILL) is finished by running it again, and
:func:`undo` puts every file back where it was, also after an interrupted
dedupe, then retires the journal.

Which image a cluster keeps (``keep``):

- ``best`` (default): most pixels, then the largest file, then the oldest
  modification time, then the first path; a bordered copy (its picture,
  inside a flat frame, letterbox bars or a margin, has the size and shape
  of another member's whole frame) counts only its picture's pixels and
  loses the tie with that member; and among the members tied on pixels, a
  noisy copy (grain all over, even in its smoothest parts, that another
  member without it lacks, and that is not explained by the other being
  more compressed) loses to them: added noise makes a file larger, so the
  file size alone would keep it;
- ``largest``: the largest file (bytes), then most pixels, then the first path;
- ``oldest`` / ``newest``: by modification time, then the first path;
- ``representative``: the manifest's representative;
- or a decisions file downloaded from the HTML report: its ``remove`` paths are
  moved, everything else stays.

The manifest records no file sizes or times (when it does, as ``size`` and
``mtime_ns`` on a member, they are checked against the files: any difference is
refused). So a dedupe checks what it can: every member of every cluster it acts
on must exist, and the size and modification time of every file are recorded in
the journal when the plan is made; a file that differs from that record when a
move (or a resumed move) is about to happen stops the run before it is touched.
"""
from __future__ import annotations

import filecmp
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from clusterimg.errors import ClusterimgError, read_json_file
from clusterimg.output import MANIFEST, unique_name, write_json_atomic, transfer_file
from clusterimg.progress import no_bar

JOURNAL = ".clusterimg-dedupe.json"
TRASH = "duplicates"
KEEP_RULES = ("best", "largest", "oldest", "newest", "representative")
DECISIONS_FORMAT = "clusterimg-decisions"


@dataclass
class Facts:
    """What the keep rules look at, for one member."""

    path: str  # manifest path (relative to the input)
    file: str  # absolute path of the file acted on
    size: int
    mtime_ns: int
    pixels: int
    aspect: float = 0.0  # width / height, upright (0: unknown)
    picture: tuple[float, float] = (1.0, 1.0)  # shares of width and height inside flat borders (picture_box)


@dataclass
class Move:
    cluster: str
    path: str  # manifest path
    src: str  # absolute
    dst: str  # absolute, inside the trash
    size: int
    mtime_ns: int


@dataclass
class DedupePlan:
    target: str  # "output" or "input"
    trash: str  # absolute
    keep: str  # the rule, or "decisions"
    moves: list[Move]
    kept: list[tuple[str, str]]  # (cluster id, manifest path)
    warnings: list[str] = field(default_factory=list)
    resumed: bool = False

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.moves)

    def lines(self, out_dir: Path) -> list[str]:
        """The plan, one line per file, for ``--dry-run``."""
        moving = {(m.cluster, m.path): m for m in self.moves}
        rows = []
        for cid, path in self.kept:
            rows.append((cid, path, f"keep  {cid}  {path}"))
        for m in self.moves:
            rows.append((m.cluster, m.path, f"move  {m.cluster}  {m.path} -> {_show(Path(m.dst), out_dir)}"))
        rows.sort(key=lambda r: (r[0], (r[0], r[1]) in moving, r[1]))
        return [r[2] for r in rows]


def _show(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


# -- the manifest and its files -----------------------------------------------


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ClusterimgError(f"{out_dir} is not a clusterimg output folder (no {MANIFEST})", exit_code=2)
    return read_json_file(path, "the manifest")


def input_root(manifest: dict[str, Any], out_dir: Path) -> Path | None:
    """The input folder of a single-input manifest: ``input_abs`` when the
    manifest has it, else ``input`` as given, tried against the current folder
    and the output folder's parent."""
    if manifest.get("input_abs"):
        return Path(manifest["input_abs"])
    given = manifest.get("input")
    if not isinstance(given, str) or not given:
        return None
    p = Path(given)
    if p.is_absolute():
        return p
    out_parent = Path(out_dir).resolve().parent
    for candidate in (Path.cwd() / p, out_parent / p, out_parent / p.name):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def input_file(manifest: dict[str, Any], out_dir: Path, rel: str) -> Path | None:
    """The input file behind a manifest path (``roots`` manifests: the first
    path component is the root's label)."""
    roots = manifest.get("roots")
    if isinstance(roots, dict) and roots:
        label, _, rest = rel.partition("/")
        return Path(roots[label]) / rest if label in roots else None
    root = input_root(manifest, out_dir)
    return root / rel if root is not None else None


def pixel_count(path: Path) -> int:
    """Width x height from the file's header (0 if it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]) * int(im.size[1])
    except Exception:
        return 0


# Grey levels a border's pixels may stray from its colour (JPEG ringing, noise).
BORDER_TOLERANCE = 12
# How closely a bordered copy's picture matches another member's frame: area and shape.
SAME_AREA = 0.03
SAME_ASPECT = 0.02


def _flat_run(lines: np.ndarray) -> int:
    """How many lines, from the first, are flat and of the first line's colour."""
    deviation = np.abs(lines - np.median(lines[0]))
    flat = np.percentile(deviation, 95, axis=1) <= BORDER_TOLERANCE
    return len(flat) if flat.all() else int(np.argmin(flat))


def picture_box(gray: np.ndarray) -> tuple[float, float]:
    """The shares of a gray image's width and height inside flat borders
    (a frame, letterbox bars, a margin; or a plain background reaching the
    edge, which :func:`bordered_copies` tells apart): (1, 1) for none, or
    when the whole image is flat."""
    h, w = gray.shape[:2]
    if h < 8 or w < 8:
        return 1.0, 1.0
    g = gray.astype(np.int16)
    top, bottom = _flat_run(g), _flat_run(g[::-1])
    left, right = _flat_run(g.T), _flat_run(g.T[::-1])
    if top + bottom >= h or left + right >= w:
        return 1.0, 1.0
    return (w - left - right) / w, (h - top - bottom) / h


def picture_facts(path: Path) -> tuple[float, tuple[float, float]]:
    """(upright aspect, picture_box) of the file, on a 512 px gray thumbnail
    ((0, (1, 1)) if it cannot be read)."""
    from clusterimg.images import load_image

    try:
        gray = load_image(path, max_side=512, gray=True)
    except Exception:
        return 0.0, (1.0, 1.0)
    return gray.shape[1] / gray.shape[0], picture_box(gray)


def bordered_copies(facts: list[Facts]) -> dict[str, Facts]:
    """{path: the member it is a bordered copy of}: members whose picture
    inside their flat borders has the area and the shape of another
    member's whole frame (a photo with a plain background reaching its edge
    has no such twin, so it keeps its full size)."""
    found = {}
    for f in facts:
        fw, fh = f.picture
        if (fw > 0.99 and fh > 0.99) or not f.aspect:
            continue
        area, aspect = f.pixels * fw * fh, f.aspect * fw / fh
        for g in facts:
            same_area = abs(area - g.pixels) <= SAME_AREA * g.pixels
            # A frame no larger than the other's is no border added around it
            # (a thin dark line along an original's edge, smeared in a blurred copy).
            if (g is not f and g.aspect and f.pixels > g.pixels and same_area
                    and abs(aspect - g.aspect) <= SAME_ASPECT * g.aspect):
                found[f.path] = g
                break
    return found


# The high-pass residual (a 3x3 kernel that is blind to planes, Immerkaer's
# noise estimator) averaged over BLOCK x BLOCK pixel blocks: its low
# percentile is the grain of the image's smoothest parts, its high one the
# detail of its busiest. On ../shared/bench/dev every noise copy has 1.44
# to 10.2 grey levels more grain than its original; a blurred, recompressed
# or bordered copy up to 3.25 less (which the detail and compression tests
# and leaving bordered copies out keep from counting the original as noisy).
BLOCK = 16
NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
NOISE_SCALE = float(np.sqrt(np.pi / 2) / 6)  # mean |residual| of Gaussian noise -> its sigma
GRAIN_MARGIN = 1.25  # grey levels of grain beyond the other member's
GRAIN_RATIO = 1.3  # and grain / detail this many times the other's: noise, not a sharper picture
FLAT_BLOCK = 0.05  # blocks of less residual are flat, not smooth: left out
COMPRESSION_SLACK = 1.25  # the other member's JPEG steps at most this many times ours


def grain(file: str | os.PathLike) -> tuple[float, float, float] | None:
    """(grain, detail, compression) of an image file at its own resolution
    (halved above 4096 px): the noise sigma estimate of its smoothest 10 %
    of blocks and of its busiest 10 %, and the mean step of its JPEG
    luminance quantisation table (0 for other formats). None if it cannot
    be read."""
    import cv2
    from PIL import Image

    from clusterimg.images import load_image

    try:
        with Image.open(file) as im:
            tables = getattr(im, "quantization", None) or {}
        gray = load_image(file, max_side=4096, gray=True).astype(np.float32)
    except Exception:
        return None
    h, w = (gray.shape[0] - 2) // BLOCK * BLOCK, (gray.shape[1] - 2) // BLOCK * BLOCK
    if h < BLOCK or w < BLOCK:
        return None
    residual = np.abs(cv2.filter2D(gray, -1, NOISE_KERNEL, borderType=cv2.BORDER_REFLECT))[1:1 + h, 1:1 + w]
    blocks = residual.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3)) * NOISE_SCALE
    # Numerically flat blocks (a border, a caption bar, blown-out sky) hold
    # no picture and no grain: they would make any member look grainier.
    blocks = blocks[blocks >= FLAT_BLOCK]
    if not len(blocks):
        return 0.0, 0.0, 0.0
    compression = float(np.mean(tables[0])) if 0 in tables else 0.0
    return float(np.percentile(blocks, 10)), float(np.percentile(blocks, 90)), compression


def noisier(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether an image measured ``a`` (:func:`grain`) is a noisy copy next
    to one measured ``b``: clearly more grain in its smoothest parts, more
    grain for its detail (a sharper picture has more of both alike), and
    ``b`` not more compressed (JPEG smooths flat parts away)."""
    (grain_a, detail_a, steps_a), (grain_b, detail_b, steps_b) = a, b
    return (grain_a > grain_b + GRAIN_MARGIN
            and grain_a / max(detail_a, 1e-3) > GRAIN_RATIO * grain_b / max(detail_b, 1e-3)
            and steps_b <= COMPRESSION_SLACK * steps_a + 0.5)


def least_noisy(ranked: list[Facts], measure: Callable[[Facts], Any], bordered=()) -> Facts:
    """The first member of ``ranked`` (a pixel tie, in the order the other
    keys give) that is no noisy copy next to another of them outside
    ``bordered``; the first of all when every one is. Members are measured
    only as far as needed: one whose grain is under GRAIN_MARGIN can be no
    noisy copy, so most ties cost one measurement."""
    known: dict[str, Any] = {}

    def grain_of(f: Facts):
        if f.path not in known:
            known[f.path] = measure(f)
        return known[f.path]

    for f in ranked:
        mine = grain_of(f)
        if mine is None or mine[0] <= GRAIN_MARGIN:
            return f
        others = (grain_of(g) for g in ranked if g is not f and g.path not in bordered)
        if not any(other is not None and noisier(mine, other) for other in others):
            return f
    return ranked[0]


def choose(facts: list[Facts], rule: str, representative: str | None = None,
           measure: Callable[[Facts], Any] | None = None) -> str:
    """The manifest path of the member kept by ``rule``. ``measure(fact)``
    gives a member's :func:`grain` (default: read from ``fact.file``); it
    is only called for members tied on pixels under ``best``."""
    if rule == "representative":
        if representative is None or representative not in {f.path for f in facts}:
            raise ValueError("cluster has no representative among its members")
        return representative
    if rule == "best":
        bordered = bordered_copies(facts)

        def pixels(f: Facts) -> int:
            return min(f.pixels, bordered[f.path].pixels) if f.path in bordered else f.pixels

        def rank(f: Facts) -> tuple:
            return -pixels(f), f.path in bordered, -f.size, f.mtime_ns, f.path

        ranked = sorted(facts, key=rank)
        tied = [f for f in ranked if pixels(f) == pixels(ranked[0])]
        return least_noisy(tied, measure or (lambda f: grain(f.file) if f.file else None), bordered).path
    keys: dict[str, Callable[[Facts], tuple]] = {
        "largest": lambda f: (-f.size, -f.pixels, f.path),
        "oldest": lambda f: (f.mtime_ns, f.path),
        "newest": lambda f: (-f.mtime_ns, f.path),
    }
    if rule not in keys:
        raise ValueError(f"unknown keep rule {rule!r} (one of {', '.join(KEEP_RULES)})")
    return min(facts, key=keys[rule]).path


def load_decisions(path: Path) -> dict[str, Any]:
    """A decisions file from the report: ``{"format": "clusterimg-decisions",
    "version": 1, "manifest_created": ..., "keep": [paths], "remove": [paths]}``."""
    data = read_json_file(path, "the decisions file")
    if (not isinstance(data, dict) or data.get("format") != DECISIONS_FORMAT
            or not isinstance(data.get("remove", []), list) or not isinstance(data.get("keep", []), list)):
        raise ClusterimgError(f"{path} is not a clusterimg decisions file (download it from report.html)",
                              exit_code=2)
    return data


def default_target(manifest: dict[str, Any]) -> str:
    return "input" if manifest.get("transfer", "none") == "none" else "output"


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except OSError:
        return None
    import stat as stat_mod

    return st if stat_mod.S_ISREG(st.st_mode) else None


def _check_trash(trash: Path, out_dir: Path, target: str, manifest: dict[str, Any], root: Path | None) -> None:
    out = out_dir.resolve()
    if trash.exists() and not trash.is_dir():
        raise ClusterimgError(f"trash path exists and is not a folder: {trash}", exit_code=2)
    if out.is_relative_to(trash):
        raise ClusterimgError(f"the trash folder {trash} contains the output folder; choose another --trash",
                              exit_code=2)
    tops = {PurePosixPath(e["output"]).parts[0] for c in manifest.get("clusters", []) for e in c["members"]
            if e.get("output")}
    tops |= {PurePosixPath(e["output"]).parts[0] for e in manifest.get("outliers", []) if e.get("output")}
    for top in tops:
        if trash.is_relative_to(out / top):
            raise ClusterimgError(f"the trash folder {trash} is inside the output's {top}/ folder; choose another "
                                  "--trash", exit_code=2)
    roots = [Path(p).resolve() for p in (manifest.get("roots") or {}).values()] or ([root.resolve()] if root else [])
    for r in roots:
        if r.is_relative_to(trash):
            raise ClusterimgError(f"the trash folder {trash} contains the input folder {r}; choose another --trash",
                                  exit_code=2)
        if trash.is_relative_to(r) and not trash.is_relative_to(out):
            raise ClusterimgError(f"the trash folder {trash} is inside the input folder {r} (a later run would read "
                                  "it again); choose another --trash", exit_code=2)


# -- planning ---------------------------------------------------------------------


def plan_dedupe(manifest: dict[str, Any], out_dir: Path, keep: str = "best", decisions: dict | None = None,
                target: str | None = None, trash: Path | None = None) -> DedupePlan:
    """What a dedupe would do; touches nothing. Refuses (ClusterimgError, exit
    status 2) when a file it would act on is missing or changed, or the trash
    folder is somewhere odd."""
    out_dir = Path(out_dir)
    target = target or default_target(manifest)
    if target not in ("output", "input"):
        raise ValueError(f"target must be 'output' or 'input', not {target!r}")
    if keep not in KEEP_RULES:
        raise ClusterimgError(f"unknown keep rule {keep!r} (one of {', '.join(KEEP_RULES)})", exit_code=2)
    if target == "output":
        if manifest.get("transfer", "none") == "none":
            raise ClusterimgError("this run wrote no files (--transfer none): dedupe the input folder (--input)",
                                  exit_code=2)
        if manifest.get("transfer") == "symlink":
            raise ClusterimgError("the output tree holds symbolic links: dedupe the input folder (--input)",
                                  exit_code=2)
    root = input_root(manifest, out_dir) if not manifest.get("roots") else None
    if target == "input" and root is None and not manifest.get("roots"):
        raise ClusterimgError(f"cannot find the input folder {manifest.get('input')!r} of this run", exit_code=2)
    trash = (Path(trash) if trash is not None else out_dir / TRASH).resolve()
    _check_trash(trash, out_dir, target, manifest, root)

    remove: set[str] | None = None
    warnings: list[str] = []
    if decisions is not None:
        made_for = decisions.get("manifest_created")
        if made_for and manifest.get("created") and made_for != manifest.get("created"):
            raise ClusterimgError(f"the decisions file was made for another run (created {made_for}; this output's "
                                  f"run: {manifest.get('created')})", exit_code=2)
        members = {m["path"] for c in manifest.get("clusters", []) for m in c["members"]}
        remove = {p for p in decisions.get("remove", []) if isinstance(p, str)}
        stray = sorted(remove - members)
        if stray:
            warnings.append(f"{len(stray)} path(s) of the decisions file are no cluster member and stay where they "
                            f"are (first: {stray[0]})")
        remove &= members

    moves: list[Move] = []
    kept: list[tuple[str, str]] = []
    taken: dict[Path, set[str]] = {}
    for cluster in manifest.get("clusters", []):
        cid = cluster["id"]
        members = cluster["members"]
        if remove is not None and not any(m["path"] in remove for m in members):
            kept.extend((cid, m["path"]) for m in members)
            continue
        facts = []
        for m in members:
            if target == "output":
                if not m.get("output"):
                    raise ClusterimgError(f"{m['path']} has no output file in the manifest", exit_code=2)
                file = out_dir / m["output"]
                rel = m["output"]
            else:
                file = input_file(manifest, out_dir, m["path"])
                rel = m["path"]
            st = _stat(file) if file is not None else None
            if st is None:
                raise ClusterimgError(f"{file or m['path']} is missing or not a file: it changed since the run; "
                                      "nothing was moved", exit_code=2)
            want_size, want_mtime = m.get("size"), m.get("mtime_ns")
            if (want_size is not None and want_size != st.st_size) or (
                    want_mtime is not None and want_mtime != st.st_mtime_ns):
                raise ClusterimgError(f"{file} changed since the run (size or modification time); nothing was moved",
                                      exit_code=2)
            facts.append((Facts(m["path"], str(file.resolve()), st.st_size, st.st_mtime_ns,
                                pixel_count(file) if keep in ("best", "largest") and remove is None else 0,
                                *(picture_facts(file) if keep == "best" and remove is None else ())), rel))
        # files of a --reference folder are never moved; they are the ones kept
        references = {m["path"] for m in members if m.get("reference")}
        if remove is not None:
            chosen = {f.path for f, _ in facts if f.path not in remove} | references
            if not chosen:
                warnings.append(f"{cid}: the decisions remove every member; all go to the trash")
        elif references:
            chosen = references
        else:
            chosen = {choose([f for f, _ in facts], keep, cluster.get("representative"))}
        for f, rel in facts:
            if f.path in chosen:
                kept.append((cid, f.path))
                continue
            dst_dir = trash / PurePosixPath(rel).parent
            if dst_dir not in taken:
                taken[dst_dir] = {p.name.casefold() for p in dst_dir.iterdir()} if dst_dir.is_dir() else set()
            name = unique_name(PurePosixPath(rel).name, taken[dst_dir])
            moves.append(Move(cid, f.path, f.file, str(dst_dir / name), f.size, f.mtime_ns))
    srcs = [m.src for m in moves]
    if len(set(srcs)) != len(srcs):
        raise ClusterimgError("the manifest names one file twice; refusing to dedupe it", exit_code=2)
    return DedupePlan(target, str(trash), "decisions" if remove is not None else keep, moves, kept, warnings)


# -- carrying it out ----------------------------------------------------------------


def journal_path(out_dir: Path) -> Path:
    return Path(out_dir) / JOURNAL


def read_journal(out_dir: Path) -> dict[str, Any] | None:
    path = journal_path(out_dir)
    if not path.is_file():
        return None
    return read_json_file(path, "the dedupe journal")


def _plan_from_journal(job: dict[str, Any]) -> DedupePlan:
    return DedupePlan(job["target"], job["trash"], job["keep"], [Move(**m) for m in job["moves"]],
                      [tuple(k) for k in job["kept"]], resumed=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _step(src: Path, dst: Path, expect: tuple[int, int] | None) -> None:
    """Move ``src`` to ``dst`` (idempotent). When both names exist the step is
    finished only if they are the same file or identical bytes; a source that
    no longer matches ``expect`` (size, mtime_ns) is refused untouched."""
    src_there, dst_there = os.path.lexists(src), os.path.lexists(dst)
    if src_there and dst_there and not _same_file(src, dst):
        raise ClusterimgError(f"both {src} and {dst} exist and differ; nothing was overwritten, resolve by hand")
    if src_there and not dst_there and expect is not None:
        st = _stat(src)
        if st is None or (st.st_size, st.st_mtime_ns) != expect:
            raise ClusterimgError(f"{src} changed since the dedupe was planned (size or modification time); "
                                  "it was not moved", exit_code=2)
    try:
        transfer_file(src, dst, "move")
    except OSError as e:
        raise ClusterimgError(f"cannot move {src} to {dst}: {e.strerror or e}")


def run_dedupe(out_dir: Path, manifest: dict[str, Any] | None = None, *, keep: str = "best",
               decisions: dict | None = None, target: str | None = None, trash: Path | None = None,
               dry_run: bool = False, bars=no_bar, say: Callable[[str], None] = lambda msg: None) -> DedupePlan:
    """Plan and carry out a dedupe of ``out_dir`` (or finish an interrupted one,
    whose journal then decides, not these options). Returns the plan."""
    out_dir = Path(out_dir)
    job = read_journal(out_dir)
    if job is not None:
        state = job.get("state")
        if state == "undoing":
            raise ClusterimgError(f"an undo was interrupted in {out_dir}: run `clusterimg undo {out_dir}` to finish "
                                  "it first", exit_code=2)
        if state == "done":
            raise ClusterimgError(f"{out_dir} was already deduplicated ({len(job['moves'])} files in {job['trash']}); "
                                  f"run `clusterimg undo {out_dir}` first to start over", exit_code=2)
        plan = _plan_from_journal(job)
        say(f"Finishing the interrupted dedupe recorded in {journal_path(out_dir)}; its plan is used, not this "
            "command's options.")
        if dry_run:
            return plan
    else:
        if manifest is None:
            manifest = load_manifest(out_dir)
        plan = plan_dedupe(manifest, out_dir, keep=keep, decisions=decisions, target=target, trash=trash)
        if dry_run or not plan.moves:
            return plan
        job = {"format": "clusterimg-dedupe-journal", "version": 1, "state": "pending",
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "manifest_created": manifest.get("created"), "target": plan.target, "trash": plan.trash,
               "keep": plan.keep, "moves": [asdict(m) for m in plan.moves], "kept": [list(k) for k in plan.kept]}
        write_json_atomic(journal_path(out_dir), job)
    with bars("dedupe")(len(plan.moves)) as shown:
        for m in plan.moves:
            _step(Path(m.src), Path(m.dst), (m.size, m.mtime_ns))
            shown.update(1)
    write_json_atomic(journal_path(out_dir), dict(job, state="done"))
    return plan


def undo(out_dir: Path, *, bars=no_bar) -> int:
    """Put every file of the last dedupe (complete or interrupted) back where
    it was, then retire the journal. Returns the number of files restored.
    Refuses, before moving anything, when a file has since appeared at a
    place a file must return to."""
    out_dir = Path(out_dir)
    job = read_journal(out_dir)
    if job is None:
        raise ClusterimgError(f"nothing to undo: {out_dir} has no dedupe journal ({JOURNAL})", exit_code=2)
    moves = [Move(**m) for m in job["moves"]]
    for m in moves:
        src, dst = Path(m.src), Path(m.dst)
        if os.path.lexists(src) and os.path.lexists(dst) and not _same_file(src, dst):
            raise ClusterimgError(f"cannot undo: {src} exists again and differs from {dst}; nothing was moved",
                                  exit_code=2)
        if not os.path.lexists(src) and not os.path.lexists(dst):
            raise ClusterimgError(f"cannot undo: {m.path} is neither at {src} nor at {dst}; nothing was moved")
    if job.get("state") != "undoing":
        write_json_atomic(journal_path(out_dir), dict(job, state="undoing"))
    restored = 0
    with bars("undo")(len(moves)) as shown:
        for m in reversed(moves):
            src, dst = Path(m.src), Path(m.dst)
            if os.path.lexists(dst):
                _step(dst, src, None)
                restored += 1
            shown.update(1)
    trash = Path(job["trash"])
    for folder in sorted({Path(m.dst).parent for m in moves}, key=lambda p: -len(p.parts)):
        while folder != trash.parent and folder.is_relative_to(trash):
            try:
                folder.rmdir()  # only empty folders, only ours
            except OSError:
                break
            folder = folder.parent
    journal_path(out_dir).unlink()
    return restored
