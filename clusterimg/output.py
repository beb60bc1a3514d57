"""The output folder: manifest, folder tree, and the transfer of files into it.

Safety rules: an existing output folder is never silently mixed with a new
run; no name ever overwrites another; and a ``move`` can be interrupted at any
point without losing a file. Before any file is touched the whole plan is
written to ``.clusterimg-pending.json``; every transfer step is idempotent, so
running the same command again finishes the job from that journal.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from clusterimg import __version__
from clusterimg.errors import ClusterimgError
from clusterimg.result import Result

MANIFEST = "clusters.json"
PENDING = ".clusterimg-pending.json"
OUTLIERS = "outliers"
TRANSFERS = ("copy", "move", "symlink", "hardlink", "none")


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
                {"path": p, "output": outputs[p] if write else None, "score": cluster.scores[p],
                 "exact": p in exact, **({"reference": True} if result.is_reference(p) else {})}
                for p in cluster.members
            ],
        })
    outlier_outputs = _place(OUTLIERS, result.outliers)
    manifest = {
        "clusterimg": __version__,
        "method": result.method,
        "threshold": result.threshold,
        "params": result.params,
    }
    if result.clustering:
        manifest["clustering"] = result.clustering
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


def planned_transfers(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(input path, output path) of every file the manifest places."""
    return [(e["path"], e["output"]) for e in _placed(manifest)]


def _placed(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [m for c in manifest["clusters"] for m in c["members"]] + manifest["outliers"]
    return [e for e in entries if e.get("output")]


# -- the output folder ------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pending_job(out: Path) -> dict[str, Any] | None:
    """The journal of an interrupted run in ``out``, if there is one."""
    journal = out / PENDING
    if not journal.is_file():
        return None
    try:
        return json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClusterimgError(f"cannot read the journal of an interrupted run, {journal}: {e}")


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Make sure ``out`` is a place this run may write to, creating it.

    A folder that exists and is not empty is refused unless ``overwrite``; even
    then only what an earlier clusterimg run wrote there (per its manifest) is
    removed, never originals it moved there, never anything else.
    """
    if out.exists() and not out.is_dir():
        raise ClusterimgError(f"output path exists and is not a folder: {out}", exit_code=2)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ClusterimgError(
                f"output folder already exists and is not empty: {out} (use --overwrite to replace an earlier "
                "clusterimg output, or --out to choose another folder)", exit_code=2)
        clear_previous_output(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClusterimgError(f"cannot create output folder {out}: {e.strerror or e}")


def clear_previous_output(out: Path) -> None:
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise ClusterimgError(
            f"{out} is not a clusterimg output folder (it has no {MANIFEST}); refusing to delete its contents",
            exit_code=2)
    try:
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClusterimgError(f"cannot read the earlier manifest {manifest_path}: {e}", exit_code=2)
    if old.get("transfer") == "move":
        raise ClusterimgError(
            f"{out} holds original files that an earlier run moved there; --overwrite will not delete them "
            "(move them back or choose another --out)", exit_code=2)
    for _, output in planned_transfers(old):
        target = out / output
        if target.is_symlink() or target.is_file():
            target.unlink()
    manifest_path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()  # only empty folders: anything we did not write stays
        except OSError:
            pass
    left = [p.name for p in out.iterdir()]
    if left:
        raise ClusterimgError(
            f"{out} still holds files clusterimg did not write ({', '.join(sorted(left)[:3])}...); "
            "remove them or choose another --out", exit_code=2)


# -- transfers ----------------------------------------------------------------


def _copy_then_publish(src: Path, dst: Path) -> None:
    """Copy to a temporary name beside ``dst``, then give it its name without
    replacing anything: a half-written copy never carries a real name."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
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


def transfer_file(src: Path, dst: Path, mode: str) -> str | None:
    """Put ``src`` at ``dst`` by ``mode``. Idempotent: a step already done is
    recognised and skipped, so an interrupted run can simply be repeated.
    Returns a note for the user when something had to be done differently."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "move":
        return _move(src, dst)
    if os.path.lexists(dst):
        return None  # done by an earlier, interrupted attempt
    if mode == "copy":
        _copy_then_publish(src, dst)
    elif mode == "symlink":
        os.symlink(src.resolve(), dst)
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            _copy_then_publish(src, dst)
            return f"hard link not possible here ({e.strerror}): copied instead"
    else:
        raise ValueError(f"unknown transfer mode {mode!r}")
    return None


def _move(src: Path, dst: Path) -> str | None:
    src_there, dst_there = os.path.lexists(src), os.path.lexists(dst)
    if dst_there and not src_there:
        return None  # moved by an earlier attempt
    if dst_there and src_there:
        # an earlier attempt copied across file systems and stopped before
        # deleting the source: drop the source only if the copy is complete
        if os.path.getsize(src) == os.path.getsize(dst):
            os.unlink(src)
            return None
        raise ClusterimgError(f"both {src} and {dst} exist with different sizes; resolve by hand")
    if not src_there:
        raise ClusterimgError(f"cannot move {src}: the file is gone (was it moved or deleted meanwhile?)")
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


def run_transfers(out: Path, job: dict[str, Any], bar, warn) -> None:
    """Carry out (or finish) the transfers of ``job`` (a pending journal)."""
    todo = _placed(job)
    notes: set[str] = set()
    with bar(len(todo)) as shown:
        for entry in todo:
            rel_src, rel_dst = entry["path"], entry["output"]
            # files of a --reference folder are copied, never moved
            mode = "copy" if job["transfer"] == "move" and entry.get("reference") else job["transfer"]
            try:
                note = transfer_file(source_path(job, rel_src), out / rel_dst, mode)
            except OSError as e:
                raise ClusterimgError(f"cannot {mode} {rel_src} to {out / rel_dst}: {e.strerror or e}")
            if note and note not in notes:
                notes.add(note)
                warn(note)
            shown.update(1)


def write_output(out: Path, manifest: dict[str, Any], bar, warn) -> None:
    """Journal the plan, transfer the files, then write the manifest."""
    if manifest["transfer"] != "none":
        write_json_atomic(out / PENDING, manifest)
    finish_job(out, manifest, bar, warn)


def finish_job(out: Path, job: dict[str, Any], bar, warn) -> dict[str, Any]:
    """Run the journal's transfers, write clusters.json, drop the journal."""
    run_transfers(out, job, bar, warn)
    write_json_atomic(out / MANIFEST, job)
    (out / PENDING).unlink(missing_ok=True)
    return job
