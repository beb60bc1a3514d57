"""The output folder: manifest, folder tree, and the transfer of files into it.

Safety rules (the README's "Safety" section says the same to users):

- ``check_paths`` runs before any long work and refuses, touching nothing, an
  output folder that is, holds or lies inside an input; one that cannot be
  written; one another run is using (an exclusive lock); one holding files
  clusterimg did not write. Everything is checked first; only then does
  ``--overwrite`` delete, and only files inside the output folder that are what
  an earlier run wrote (a copy that still matches its source, a link), never an
  original that a ``move`` put there, never anything else.
- Files found in the output folder are not trusted: every path read from a
  manifest or journal must stay inside the output folder (outputs) or inside
  the journal's input (sources), and a journal is only replayed for the same
  input, and for other options only with ``--resume``.
- No name ever overwrites another, and a ``move`` can be interrupted at any
  point without losing a file: before any file is touched the whole plan is
  written to ``.clusterimg-pending.json``; every transfer step is idempotent,
  so running the same command again finishes the job from that journal. A
  source that vanished meanwhile is listed as skipped and the rest goes on.
- JSON is written strictly (no NaN); file names that are not valid UTF-8 are
  kept as Python's surrogate escapes, written as ``\\udcXX`` JSON escapes.
"""
from __future__ import annotations

import errno
import filecmp
import json
import math
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from clusterimg import __version__
from clusterimg.atomic import atomic_file
from clusterimg.errors import ClusterimgError, read_json_file
from clusterimg.result import Result

MANIFEST = "clusters.json"
PENDING = ".clusterimg-pending.json"
LOCK = ".clusterimg-lock"
OUTLIERS = "outliers"
TRANSFERS = ("copy", "move", "symlink", "hardlink", "none")
# what the transfer options of a journal must match for it to be finished without --resume
JOB_OPTIONS = ("method", "threshold", "params", "transfer")
# names of clusterimg's own temporary files (a killed run can leave them behind)
TEMP_PREFIXES = (".part-", ".tmp-")
# a copy counts as unchanged when its size matches and its time is this close (FAT keeps 2 s)
MTIME_SLACK_NS = 2_000_000_000


# -- planning -------------------------------------------------------------------


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem__2.ext``, ``stem__3.ext``... if taken. Names are
    compared case-insensitively so the plan also holds on macOS and Windows
    file systems. Adds the chosen name to ``taken``."""
    path = PurePosixPath(name)
    candidate, n = name, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{path.stem}__{n}{path.suffix}"
    taken.add(candidate.casefold())
    return candidate


def _place(folder: str, paths: Iterable[str]) -> dict[str, str]:
    taken: set[str] = set()
    return {p: f"{folder}/{unique_name(PurePosixPath(p).name, taken)}" for p in paths}


def build_manifest(result: Result, *, transfer: str) -> dict[str, Any]:
    """The clusters.json object. Paths are relative to the input folder (with
    several inputs, prefixed by each input's label), outputs relative to the
    output folder (null when nothing is written)."""
    width = max(4, len(str(len(result.clusters))))
    write = transfer != "none"
    clusters = []
    for number, cluster in enumerate(result.clusters, 1):
        cid = f"cluster_{number:0{width}d}"
        outputs = _place(cid, cluster.members)
        exact = set(cluster.exact)
        clusters.append({
            "id": cid,
            "representative": cluster.representative,
            "members": [
                {"path": p, "output": outputs[p] if write else None, "score": _finite(cluster.scores[p]),
                 "exact": p in exact, **({"reference": True} if result.is_reference(p) else {})}
                for p in cluster.members
            ],
        })
    outlier_outputs = _place(OUTLIERS, result.outliers)
    manifest = {
        "clusterimg": __version__,
        "method": result.method,
        "threshold": None if result.threshold is None else _finite(result.threshold),
        "params": result.params,
    }
    if result.clustering:
        manifest["clustering"] = {k: v for k, v in result.clustering.items() if k != "model_selection"}
        if "model_selection" in result.clustering:  # the candidates tried and the one chosen
            manifest["model_selection"] = result.clustering["model_selection"]
    manifest.update({
        "input": result.input_arg,
        **roots_entry(result),
        "transfer": transfer,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "clusters": clusters,
        "outliers": [{"path": p, "output": outlier_outputs[p] if write else None,
                      **({"reference": True} if result.is_reference(p) else {})} for p in result.outliers],
        "skipped": [{"path": s.path, "reason": s.reason} for s in result.skipped],
        "stats": {
            "images": result.images,
            "skipped": len(result.skipped),
            "clusters": len(result.clusters),
            "outliers": len(result.outliers),
            "exact_copies": result.counts.get("exact_copies", 0),
            "seconds": round(result.seconds, 3),
        },
    })
    return manifest


def roots_entry(result: Result) -> dict[str, Any]:
    """Where the input paths live: ``input_abs`` (one input folder) or
    ``roots`` (label -> absolute folder, several inputs)."""
    if len(result.roots) == 1 and not result.roots[0].label:
        return {"input_abs": str(result.roots[0].path)}
    return {"roots": {r.label: str(r.path) for r in result.roots}}


def source_path(job: dict[str, Any], rel: str) -> Path:
    """The input file behind a manifest path."""
    if "roots" in job:
        label, _, rest = rel.partition("/")
        return Path(job["roots"][label]) / rest
    return Path(job["input_abs"]) / rel


def _finite(x: float) -> float | None:
    """A number JSON can carry; None for NaN or an infinity."""
    x = float(x)
    return x if math.isfinite(x) else None


def planned_transfers(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(input path, output path) of every file the manifest places."""
    return [(e["path"], e["output"]) for e in _placed(manifest)]


def _placed(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [m for c in manifest["clusters"] for m in c["members"]] + manifest["outliers"]
    return [e for e in entries if e.get("output")]


# -- JSON ------------------------------------------------------------------------


def dumps_json(data: Any) -> str:
    """JSON text, strict (NaN and infinities refused) and always valid UTF-8:
    a name that is not valid UTF-8 carries surrogate escapes (os.fsdecode),
    which are written as ``\\udcXX`` escapes; ``json.loads`` and ``os.fsencode``
    give the original bytes back."""
    try:
        text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ClusterimgError(f"internal error: a value cannot be written as JSON ({e})")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one."""
    text = dumps_json(data) + "\n"
    try:
        with atomic_file(path, binary=False, prefix=".tmp-", suffix=".json") as f:
            f.write(text)
    except OSError as e:
        raise ClusterimgError(f"cannot write {path}: {e.strerror or e}")


# -- where things are --------------------------------------------------------------


def default_out(folder: Path) -> Path:
    """``FOLDER_clustered`` beside the input, named after the resolved folder
    (so ``clusterimg run .`` writes beside the current folder, not into it)."""
    resolved = folder.resolve()
    return resolved.parent / f"{resolved.name or 'root'}_clustered"


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def path_relation(out: Path, folder: Path) -> str | None:
    """How ``out`` relates to ``folder`` (both resolved): 'is', 'is inside',
    'contains', or None when neither holds the other."""
    if out == folder:
        return "is"
    if folder in out.parents:
        return "is inside"
    if out in folder.parents:
        return "contains"
    return None


def _safe_rel(rel: Any, base: Path, what: str, min_parts: int = 1) -> Path:
    """``base / rel`` for a relative path read from a file, refused unless it
    stays inside ``base`` (``base`` resolved; symlinked folders followed)."""
    if not isinstance(rel, str) or not rel:
        raise ClusterimgError(f"{what}: not a path: {rel!r}", exit_code=2)
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or any(p in ("..", ".", "") for p in rel.split("/")) \
            or len(pure.parts) < min_parts:
        raise ClusterimgError(f"{what}: {rel!r} is not a path inside {base}", exit_code=2)
    path = base / rel
    if not _within(path.parent.resolve(), base):
        raise ClusterimgError(f"{what}: {rel!r} leads outside {base}", exit_code=2)
    return path


def validate_job(job: Any, out: Path, what: str) -> dict[str, Any]:
    """A manifest or journal read from ``out`` (resolved), checked before any
    of it is used: its structure, its input folder (``input_abs``; for older
    manifests ``input``), which must not be, hold or lie inside ``out``, every
    source inside that input and every output inside ``out``. Returns the
    job with ``input_abs`` filled in; raises ClusterimgError (exit 2)."""
    if not isinstance(job, dict):
        raise ClusterimgError(f"{what} is not a clusterimg file", exit_code=2)
    if job.get("transfer") not in TRANSFERS:
        raise ClusterimgError(f"{what} names no known transfer mode", exit_code=2)
    threshold = job.get("threshold")  # None for vector clustering models
    if not isinstance(job.get("method"), str) or isinstance(threshold, bool) \
            or not (threshold is None or isinstance(threshold, (int, float))) or not isinstance(job.get("stats", {}), dict):
        raise ClusterimgError(f"{what} has no valid method, threshold or stats", exit_code=2)
    clusters, outliers = job.get("clusters"), job.get("outliers")
    if not isinstance(clusters, list) or not isinstance(outliers, list) or not all(
            isinstance(c, dict) and isinstance(c.get("members"), list) for c in clusters):
        raise ClusterimgError(f"{what} has no valid cluster list", exit_code=2)
    entries = [e for c in clusters for e in c["members"]] + outliers
    if not all(isinstance(e, dict) for e in entries):
        raise ClusterimgError(f"{what} has an invalid entry", exit_code=2)
    if isinstance(job.get("roots"), dict) and job["roots"]:
        texts = job["roots"]  # several inputs: label -> folder; paths start with the label
    else:
        texts = {"": job.get("input_abs", job.get("input"))}
    roots = {}
    for label, text in texts.items():
        if not isinstance(label, str) or not isinstance(text, str) or not text:
            raise ClusterimgError(f"{what} names no input folder", exit_code=2)
        roots[label] = Path(text).resolve()
        if path_relation(out, roots[label]) is not None:
            raise ClusterimgError(f"{what}: its input folder {roots[label]} overlaps the output folder", exit_code=2)
    for entry in entries:
        path = entry.get("path")
        label, rest = ("", path) if "" in roots else (str(path).partition("/")[0], str(path).partition("/")[2])
        if label not in roots:
            raise ClusterimgError(f"{what}: source {path!r} names no input folder of the run", exit_code=2)
        _safe_rel(rest, roots[label], f"{what}: source")
        if entry.get("output") is not None:
            _safe_rel(entry["output"], out, f"{what}: output", min_parts=2)
    if "" in roots:
        return dict(job, input_abs=str(roots[""]))
    return dict(job, roots={label: str(p) for label, p in roots.items()})


def job_inputs(job: dict[str, Any]) -> list[str]:
    """The input folders of a (validated) journal or manifest."""
    return list(job["roots"].values()) if "roots" in job else [job["input_abs"]]


def _differences(job: dict[str, Any], command: dict[str, Any]) -> list[str]:
    command = json.loads(json.dumps(command, default=str))  # compared as the journal stores them
    return [f"{k} {job.get(k)!r} (this command: {command[k]!r})"
            for k in JOB_OPTIONS if k in command and job.get(k) != command[k]]


# -- the lock ----------------------------------------------------------------------


class _Lock:
    """An exclusive lock on ``folder`` (flock on a file in it, released by the
    kernel when the process dies; where flock does not exist, no lock)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # not POSIX
            return True
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file another run unlinked while we waited
                self.fd = fd
                return True
            os.close(fd)
        return False

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


# -- deciding what an existing output folder holds -----------------------------------


def _is_ours_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIXES)


def _deletable(target: Path, source: Path, mode: str) -> bool:
    """Whether ``target`` (in the output folder) is what ``mode`` made of
    ``source``, so deleting it loses nothing: a link, or a copy / hard link
    whose source still exists unchanged outside the output folder."""
    try:
        st = os.lstat(target)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return mode == "symlink"
    if not stat.S_ISREG(st.st_mode) or mode not in ("copy", "hardlink"):
        return False
    try:
        src = os.stat(source)
    except OSError:
        return False  # the source is gone: this may be the only copy left
    if (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino):
        return True  # a hard link: the source keeps the data
    return src.st_size == st.st_size and abs(src.st_mtime_ns - st.st_mtime_ns) <= MTIME_SLACK_NS


def _walk_files(out: Path) -> list[Path]:
    """Every non-folder entry under ``out`` (symlinks not followed)."""
    found = []

    def fail(error: OSError) -> None:
        raise error  # an unreadable subfolder: refuse rather than guess what it holds

    for folder, dirs, files in os.walk(out, onerror=fail, followlinks=False):
        found.extend(Path(folder) / f for f in files)
        found.extend(Path(folder) / d for d in dirs if os.path.islink(os.path.join(folder, d)))
    return found


@dataclass
class OutputFolder:
    """The checked output folder of one run, locked until ``release()``
    (or the end of a ``with`` block). ``job`` is a validated journal of an
    interrupted run to finish instead of starting anew, or None."""

    out: Path
    job: dict[str, Any] | None = None
    _lock: _Lock | None = None
    _created: list[Path] = field(default_factory=list)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abandon(self) -> None:
        """Release, and remove the folders this check created if still empty."""
        self.release()
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def check_paths(
    inputs: Sequence[Path], out: Path, *, overwrite: bool, resume: bool, command: dict[str, Any] | None = None,
) -> OutputFolder:
    """Everything about the input and output folders that can fail, checked
    before any long work; refuses with ClusterimgError (exit 2), nothing touched.

    Refused: a missing or unreadable input; an ``out`` that is, holds or is
    inside any input (resolved, symlinks followed); an ``out`` that is a file
    or cannot be created or written; one another run holds (lock); a journal
    or manifest with a path outside its folders; a journal of another input, or
    (without ``--resume``) of other options (``command``: this run's method,
    threshold, params and transfer); a non-empty ``out`` without
    ``--overwrite``; with ``--overwrite``, a folder that is not clusterimg's,
    holds originals a move put there, or holds anything clusterimg did not
    write. Only when all of that passed does ``--overwrite`` delete the old
    output (and a discarded journal). Creates ``out`` and locks it: the
    returned OutputFolder must be released (use it as a context manager).
    """
    resolved_inputs = []
    for folder in inputs:
        if not folder.is_dir():
            raise ClusterimgError(
                f"input folder not found: {folder}" if not folder.exists() else f"input is not a folder: {folder}",
                exit_code=2)
        if not os.access(folder, os.R_OK | os.X_OK):
            raise ClusterimgError(f"input folder cannot be read (permission denied): {folder}", exit_code=2)
        resolved_inputs.append(folder.resolve())
    out_r = out.resolve()
    for folder, folder_r in zip(inputs, resolved_inputs):
        relation = path_relation(out_r, folder_r)
        if relation is not None:
            where = {"is": "is the input folder", "is inside": "is inside the input folder",
                     "contains": "contains the input folder"}[relation]
            raise ClusterimgError(
                f"the output folder {out} {where} {folder}: clusterimg never writes into what it reads; "
                "choose an --out beside the input", exit_code=2)
    if out_r.exists() and not out_r.is_dir():
        raise ClusterimgError(f"output path exists and is not a folder: {out}", exit_code=2)
    existing = out_r
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ClusterimgError(f"cannot create the output folder {out}: {existing} is not a folder", exit_code=2)
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == out_r else f"folder {existing} (where {out} would be created)"
        raise ClusterimgError(f"cannot write to the {what}: permission denied or read-only", exit_code=2)

    created = []
    missing = [p for p in [out_r, *out_r.parents] if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    except OSError as e:
        OutputFolder(out_r, _created=created).abandon()
        raise ClusterimgError(f"cannot create the output folder {out}: {e.strerror or e}", exit_code=2)
    lock = _Lock(out_r)
    try:
        locked = lock.acquire()
    except OSError as e:
        OutputFolder(out_r, _created=created).abandon()
        raise ClusterimgError(f"cannot write to the output folder {out}: {e.strerror or e}", exit_code=2)
    if not locked:
        raise ClusterimgError(f"another clusterimg run is using {out}; wait for it to end or choose another --out",
                              exit_code=2)
    folder = OutputFolder(out_r, _lock=lock, _created=created)
    try:
        _inspect(folder, out, resolved_inputs, overwrite=overwrite, resume=resume, command=command)
    except OSError as e:
        folder.abandon()
        raise ClusterimgError(f"cannot read the output folder {out}: {e.strerror or e}", exit_code=2)
    except BaseException:
        folder.abandon()
        raise
    return folder


def _inspect(folder: OutputFolder, shown: Path, inputs: list[Path], *, overwrite: bool, resume: bool,
             command: dict[str, Any] | None) -> None:
    """The part of check_paths that reads what ``out`` holds (under the lock)."""
    out = folder.out
    job = None
    if (out / PENDING).exists() or os.path.islink(out / PENDING):
        journal = out / PENDING
        if journal.is_symlink() or not journal.is_file():
            raise ClusterimgError(f"{journal} is not a regular file; refusing to use it", exit_code=2)
        job = validate_job(read_json_file(journal, "the journal of an interrupted run"), out,
                           f"the journal of an interrupted run, {journal}")
    if job is not None and not overwrite:
        if inputs and sorted(str(Path(p).resolve()) for p in inputs) != sorted(job_inputs(job)):
            theirs = " ".join(job_inputs(job))
            raise ClusterimgError(
                f"{shown} holds an interrupted run of another input ({theirs}); finish it with "
                f"`clusterimg run {theirs} --out {shown} --resume`, or choose another --out", exit_code=2)
        differences = _differences(job, command or {})
        if differences and not resume:
            raise ClusterimgError(
                f"{shown} holds an interrupted run with other options: {'; '.join(differences)}. "
                "Add --resume to finish it with its own options, or --overwrite to discard it", exit_code=2)
        folder.job = job
        return
    if resume and job is None:
        raise ClusterimgError(f"nothing to resume in {shown}: it holds no interrupted run", exit_code=2)

    # a run killed before its journal was complete leaves only clusterimg's own temporary files
    entries = [e for e in os.listdir(out) if e != LOCK and not _is_ours_temp(e)]
    if not entries:
        return
    if not overwrite:
        raise ClusterimgError(
            f"output folder already exists and is not empty: {shown} (use --overwrite to replace an earlier "
            "clusterimg output, or --out to choose another folder)", exit_code=2)

    # --overwrite: decide everything before deleting anything
    plans = [job] if job is not None else []
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and not manifest_path.is_symlink():
        plans.append(validate_job(read_json_file(manifest_path, "the earlier manifest"), out,
                                  f"the earlier manifest {manifest_path}"))
    elif job is None:
        raise ClusterimgError(
            f"{shown} is not a clusterimg output folder (it has no {MANIFEST}); refusing to delete its contents",
            exit_code=2)
    deletable: set[Path] = set()
    for plan in plans:
        if plan["transfer"] == "move":
            raise ClusterimgError(
                f"{shown} holds original files that an earlier run moved there; --overwrite will not delete them "
                "(move them back or choose another --out)", exit_code=2)
        for rel_src, rel_dst in planned_transfers(plan):
            target = out / rel_dst
            if _deletable(target, source_path(plan, rel_src), plan["transfer"]):
                deletable.add(target)
    keep = []
    for path in _walk_files(out):
        if path in deletable or _is_ours_temp(path.name) or path.parent == out and path.name in (MANIFEST, PENDING, LOCK):
            continue
        keep.append(path.relative_to(out).as_posix())
    if keep:
        raise ClusterimgError(
            f"{shown} holds files clusterimg did not write, or copies whose source is gone or changed (they may be "
            f"the only copy left): {', '.join(sorted(keep)[:3])}{'...' if len(keep) > 3 else ''}; "
            "nothing was deleted. Remove them or choose another --out", exit_code=2)
    try:
        for path in _walk_files(out):
            if path.name != LOCK or path.parent != out:
                path.unlink()
        for sub, _, _ in sorted(os.walk(out), key=lambda t: -len(Path(t[0]).parts)):
            if Path(sub) != out:
                Path(sub).rmdir()
    except OSError as e:
        raise ClusterimgError(f"cannot delete the earlier output in {shown}: {e.strerror or e}", exit_code=2)


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Check and create ``out`` for a run (check_paths without inputs), unlocked."""
    check_paths([], out, overwrite=overwrite, resume=False).release()


def pending_job(out: Path) -> dict[str, Any] | None:
    """The validated journal of an interrupted run in ``out``, if there is one."""
    journal = out / PENDING
    if not journal.is_file():
        return None
    return validate_job(read_json_file(journal, "the journal of an interrupted run"), out.resolve(),
                        f"the journal of an interrupted run, {journal}")


# -- transfers ----------------------------------------------------------------


class SourceVanished(Exception):
    """The file to transfer is no longer there."""


def _copy_then_publish(src: Path, dst: Path) -> None:
    """Copy to a temporary name beside ``dst``, then give it its name without
    replacing anything: a half-written copy never carries a real name."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dst.parent)
    os.close(fd)
    try:
        try:
            shutil.copy2(src, tmp)
        except FileNotFoundError:
            if not os.path.exists(src):
                raise SourceVanished(str(src))
            raise
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _link_no_clobber(Path(tmp), dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _link_no_clobber(src: Path, dst: Path) -> None:
    """Give ``src``'s file the name ``dst`` as well, failing if ``dst`` exists."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        # file systems without hard links: check, then rename (never replace)
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)


def transfer_file(src: Path, dst: Path, mode: str, link_target: Path | None = None) -> str | None:
    """Put ``src`` at ``dst`` by ``mode``. Idempotent: a step already done is
    recognised and skipped, so an interrupted run can simply be repeated.
    Returns a note for the user when something had to be done differently;
    raises SourceVanished when ``src`` is gone and the step was not done.
    ``link_target``: where a moved symbolic link should point (its target's
    new place, when this run moves the target too)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "move":
        return _move(src, dst, link_target)
    if os.path.lexists(dst):
        return None  # done by an earlier, interrupted attempt
    if not os.path.exists(src):
        raise SourceVanished(str(src))
    if mode == "copy":
        _copy_then_publish(src, dst)
    elif mode == "symlink":
        os.symlink(src.resolve(), dst)
    elif mode == "hardlink":
        try:
            os.link(os.path.realpath(src), dst)  # the file itself, not a (relative) link to it
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            _copy_then_publish(src, dst)
            return f"hard link not possible here ({e.strerror}): copied instead"
    else:
        raise ValueError(f"unknown transfer mode {mode!r}")
    return None


def _move(src: Path, dst: Path, link_target: Path | None = None) -> str | None:
    src_there, dst_there = os.path.lexists(src), os.path.lexists(dst)
    if dst_there and not src_there:
        return None  # moved by an earlier attempt
    if dst_there and src_there:
        # an earlier attempt copied across file systems and stopped before
        # deleting the source: drop the source only if the copy is complete
        if os.path.islink(src) and os.path.islink(dst):
            os.unlink(src)  # the link was made from this one; stopped before the old one was dropped
            return None
        if not os.path.islink(dst) and (os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False)):
            os.unlink(src)
            return None
        raise ClusterimgError(f"both {src} and {dst} exist and differ; resolve by hand")
    if not src_there:
        raise SourceVanished(str(src))
    if os.path.islink(src):
        # a link moves as a link to the same file: relative targets are made
        # absolute (or point to where this run moves the file), so it does not dangle
        os.symlink(link_target or os.path.realpath(src), dst)
        os.unlink(src)
        return None
    try:
        os.link(src, dst)  # atomic and never overwrites; then drop the old name
        os.unlink(src)
        return None
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
    # another file system, or no hard links: copy completely, then delete
    _copy_then_publish(src, dst)
    os.unlink(src)
    return None


VANISHED = "disappeared during the run (not transferred)"


def run_transfers(out: Path, job: dict[str, Any], bar, warn) -> list[str]:
    """Carry out (or finish) the transfers of ``job`` (a pending journal).
    Returns the sources that vanished before their transfer (the rest go on)."""
    todo = _placed(job)
    notes: set[str] = set()
    vanished = []
    moved_to: dict[str, Path] = {}  # a moved file's old resolved path -> its new place
    if job["transfer"] == "move":
        for entry in todo:
            src = source_path(job, entry["path"])
            if not os.path.islink(src) and not entry.get("reference"):
                moved_to[os.path.realpath(src)] = out / entry["output"]
    with bar(len(todo)) as shown:
        for entry in todo:
            rel_src, rel_dst = entry["path"], entry["output"]
            # files of a --reference folder are copied, never moved
            mode = "copy" if job["transfer"] == "move" and entry.get("reference") else job["transfer"]
            try:
                src = source_path(job, rel_src)
                target = moved_to.get(os.path.realpath(src)) if moved_to and os.path.islink(src) else None
                note = transfer_file(src, out / rel_dst, mode, target) if target else \
                    transfer_file(src, out / rel_dst, mode)
            except SourceVanished:
                vanished.append(rel_src)
                note = None
            except OSError as e:
                raise ClusterimgError(f"cannot {mode} {rel_src} to {out / rel_dst}: {e.strerror or e}")
            if note and note not in notes:
                notes.add(note)
                warn(note)
            shown.update(1)
    if vanished:
        warn(f"{len(vanished)} file(s) disappeared during the run and were not transferred "
             f"(listed as skipped), e.g. {vanished[0]}")
    return vanished


def write_output(out: Path, manifest: dict[str, Any], bar, warn) -> dict[str, Any]:
    """Journal the plan, transfer the files, then write the manifest."""
    if manifest["transfer"] != "none":
        write_json_atomic(out / PENDING, manifest)
    return finish_job(out, manifest, bar, warn)


def finish_job(out: Path, job: dict[str, Any], bar, warn) -> dict[str, Any]:
    """Run the journal's transfers, write clusters.json, drop the journal.
    ``job`` must come from ``write_output`` or be validated (check_paths,
    pending_job)."""
    vanished = set(run_transfers(out, job, bar, warn))
    manifest = json.loads(json.dumps(job))  # a deep copy
    stats = manifest.get("stats") if isinstance(manifest.get("stats"), dict) else {}
    manifest["stats"] = stats
    if vanished:
        for entry in [m for c in manifest["clusters"] for m in c["members"]] + manifest["outliers"]:
            if entry["path"] in vanished:
                entry["output"] = None
        skipped = manifest.setdefault("skipped", [])
        skipped.extend({"path": p, "reason": VANISHED} for p in sorted(vanished))
        stats["skipped"] = len(skipped)
    for key, value in (("images", 0), ("skipped", len(manifest.get("skipped", []))),
                       ("clusters", len(manifest["clusters"])), ("outliers", len(manifest["outliers"])),
                       ("seconds", 0.0)):
        stats.setdefault(key, value)
    write_json_atomic(out / MANIFEST, manifest)
    try:
        (out / PENDING).unlink(missing_ok=True)
    except OSError as e:
        raise ClusterimgError(f"cannot remove the finished journal {out / PENDING}: {e.strerror or e}")
    return manifest
