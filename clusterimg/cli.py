"""Command line: parse options, call the pipeline, print. No logic lives here."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from clusterimg import __version__
from clusterimg.errors import ClusterimgError
from clusterimg.methods import available, get_method
from clusterimg.output import TRANSFERS, build_manifest, finish_job, pending_job, prepare_out_dir, write_output
from clusterimg.pipeline import cluster_folder, tqdm_bars


def backend_options(command):
    """Add every backend's own options (``--hash-size`` ...) to a command.

    Options of the same name in several backends share one flag; its default
    is None so each backend falls back to its own default.
    """
    seen: dict[str, list[str]] = {}
    specs = {}
    for name, cls in available().items():
        for opt in cls.options:
            seen.setdefault(opt.name, []).append(name)
            specs.setdefault(opt.name, opt)
    for opt_name in sorted(specs, reverse=True):
        opt = specs[opt_name]
        flag = "--" + opt_name.replace("_", "-")
        if opt.type is bool:
            decl = [f"{flag}/--no-{flag[2:]}"]
        else:
            decl = [flag]
        command = click.option(
            *decl, opt_name, type=None if opt.type is bool else opt.type, default=None,
            help=f"{opt.help} [{', '.join(seen[opt_name])}; default {opt.default}]",
        )(command)
    return command


def split_backend_options(method_name: str, kwargs: dict) -> dict:
    """Pop backend options from ``kwargs``; refuse one the method does not take."""
    known = {o.name for cls in available().values() for o in cls.options}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
    own = {o.name for o in available()[method_name].options}
    wrong = sorted(k for k, v in given.items() if v is not None and k not in own)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise click.UsageError(f"{flags} does not apply to --method {method_name}")
    return {k: v for k, v in given.items() if k in own}


def friendly_errors(fn):
    """Fatal errors become one line and an exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClusterimgError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("\nInterrupted. Run the same command again to resume.", err=True)
            sys.exit(130)

    return wrapper


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clusterimg")
def main():
    """Sort a folder of photos into clusters of alike images."""


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@click.option("--method", "-m", type=click.Choice(sorted(available())), default="phash", show_default=True,
              help="Similarity backend (see `clusterimg methods`).")
@click.option("--threshold", "-t", type=click.FloatRange(0.0, 1.0), default=None,
              help="Pairs at least this similar (0..1) are joined. [default: the method's calibrated one]")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder. [default: FOLDER_clustered beside the input]")
@click.option("--transfer", type=click.Choice(TRANSFERS), default="copy", show_default=True,
              help="How files get into the output tree; `none` writes only the manifest.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier clusterimg output in --out.")
@click.option("--batch-size", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Images compared together in the first stage; 0 = one batch.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subfolders.")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Processes for reading images. [default: CPU count]")
@click.option("--exhaustive", is_flag=True, help="Score every pair instead of the method's candidate search.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout (the summary goes to stderr).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@backend_options
@friendly_errors
def run(folder, method, threshold, out, transfer, overwrite, batch_size, recursive, workers, exhaustive,
        as_json, quiet, **kwargs):
    """Cluster the images in FOLDER and write the clusters to an output folder."""
    options = split_backend_options(method, kwargs)
    try:
        backend = get_method(method, **options)
    except ValueError as e:
        raise click.UsageError(str(e))
    threshold = backend.default_threshold if threshold is None else threshold
    out = out if out is not None else folder.parent / f"{folder.resolve().name}_clustered"
    bars = tqdm_bars(show_progress(quiet))
    say = (lambda msg: click.echo(msg, err=True)) if (as_json or quiet) else click.echo
    warn = lambda msg: click.echo(f"Warning: {msg}", err=True)

    job = pending_job(out)
    if job is not None:
        say(f"Finishing the interrupted run recorded in {out} ({job['transfer']} of "
            f"{len(job['clusters'])} clusters); its options are used, not this command's.")
        manifest = finish_job(out, job, bars(job["transfer"]), warn)
    else:
        if not folder.is_dir():
            raise ClusterimgError(
                f"input folder not found: {folder}" if not folder.exists() else f"input is not a folder: {folder}",
                exit_code=2)
        inside = _is_inside(out, folder)
        prepare_out_dir(out, overwrite)
        result = cluster_folder(
            folder, backend, threshold, batch_size=batch_size, recursive=recursive,
            workers=workers or os.cpu_count() or 1, exhaustive=exhaustive,
            exclude=out if inside else None, bars=bars,
        )
        params = dict(backend.params, batch_size=batch_size, exhaustive=exhaustive)
        manifest = build_manifest(result, method=method, threshold=threshold, params=params,
                                  input_arg=str(folder), transfer=transfer)
        write_output(folder, out, manifest, bars(transfer), warn)
    if as_json:
        click.echo(json.dumps(manifest, indent=1, ensure_ascii=False))
    if not quiet:
        say(summary_line(manifest, out))


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def summary_line(manifest: dict, out: Path) -> str:
    s = manifest["stats"]
    return (f"{s['images']} images read, {s['skipped']} skipped: {s['clusters']} clusters, "
            f"{s['outliers']} outliers in {s['seconds']:.1f} s ({manifest['method']}, threshold "
            f"{manifest['threshold']:g}) -> {out / 'clusters.json'}")


@main.command("methods")
def methods_command():
    """List the similarity backends, what each is good at, and their options."""
    for name, cls in available().items():
        click.echo(f"{name:8s} {cls.summary}")
        click.echo(f"{'':8s} default threshold {cls.default_threshold:g}")
        for opt in cls.options:
            flag = "--" + opt.name.replace("_", "-")
            click.echo(f"{'':8s} {flag} (default {opt.default}): {opt.help}")
        click.echo()
