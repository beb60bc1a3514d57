"""Command line: parse options, call the library API, print, exit codes. No logic lives here."""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import sys
from pathlib import Path

import click

from clusterimg import __version__, api
from clusterimg import thresholds as th
from clusterimg.cache import ENV_VAR, default_cache_dir
from clusterimg.clustering import available_clusterers
from clusterimg.errors import ClusterimgError
from clusterimg.features import available
from clusterimg.maps import require_matplotlib
from clusterimg.output import (MANIFEST, PENDING, TRANSFERS, check_paths, default_out, dumps_json, finish_job,
                               write_output)
from clusterimg.progress import tqdm_bars


def model_options(command):
    """Add every backend's and every clustering model's own options
    (``--hash-size``, ``--k`` ...) to a command: the one place where options
    described as data become flags.

    Options of the same name in several backends share one flag; its default
    is None so each backend falls back to its own default.
    """
    defaults: dict[str, dict[str, object]] = {}  # option -> {backend or model: its default}
    specs = {}
    owners = list(available().items()) + list(available_clusterers().items())
    for name, cls in owners:
        for opt in cls.options:
            defaults.setdefault(opt.name, {})[name] = opt.default
            specs.setdefault(opt.name, opt)
    for opt_name in sorted(specs, reverse=True):
        opt = specs[opt_name]
        decl = [f"{opt.flag}/--no-{opt.flag[2:]}"] if opt.type is bool else [opt.flag]
        per_owner = defaults[opt_name]
        if len(set(map(str, per_owner.values()))) == 1:
            where = f"{', '.join(per_owner)}; default {opt.default}"
        else:
            where = "default " + ", ".join(f"{b} {d}" for b, d in per_owner.items())
        command = click.option(
            *decl, opt_name, type=None if opt.type is bool else (click.Choice(opt.choices) if opt.choices else opt.type),
            default=None, help=f"{opt.help} [{where}]",
        )(command)
    return command


def check_options(method: str, cluster: str | None, options: dict):
    """The backend and clustering model of these options; a usage error, before
    any work, for options that do not fit them."""
    try:
        return api.configure(method, cluster, **options)
    except ValueError as e:
        raise click.UsageError(str(e))


DEBUG_VAR = "CLUSTERIMG_DEBUG"


def friendly_errors(fn):
    """Fatal errors become one line and an exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClusterimgError as e:
            click.echo(f"Error: {printable(str(e))}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            ctx = click.get_current_context(silent=True)
            state, out = (ctx.meta.get("clusterimg.interrupted") if ctx is not None else None) or (None, None)
            click.echo("\n" + interrupt_message(state, out, bool(kwargs.get("no_cache"))), err=True)
            sys.exit(130)
        except BrokenPipeError:  # `clusterimg ... | head`: the reader has gone, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:
            name = f" {e.filename}:" if getattr(e, "filename", None) else ""
            click.echo(f"Error:{printable(name)} {e.strerror or e}", err=True)
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors: click prints them
        except Exception as e:  # the last guard: a bug is one line too, never a traceback
            if os.environ.get(DEBUG_VAR):
                raise
            detail = printable(str(e).splitlines()[0]) if str(e) else ""
            click.echo(f"Error: internal error ({type(e).__name__}{': ' + detail if detail else ''}); please "
                       f"report it (set {DEBUG_VAR}=1 to see where it happened)", err=True)
            sys.exit(1)

    return wrapper


class SizeType(click.ParamType):
    """A size in bytes: 2G, 500MB, 1.5GiB, 0 (no cap)."""

    name = "size"

    def convert(self, value, param, ctx):
        from clusterimg.cache_admin import parse_size

        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def cache_options(command):
    """--cache-dir, --no-cache and --cache-max-size, shared by `run` and `threshold`."""
    command = click.option(
        "--cache-max-size", type=SizeType(), default=None,
        help="Cap on the cache's size (e.g. 2G, 500MB, 0 = none); least recently used entries are dropped "
             "beyond it. [default: $CLUSTERIMG_CACHE_MAX_SIZE, else 2G]")(command)
    command = click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")(command)
    return click.option(
        "--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
        help=f"Where features and pair scores are kept between runs. [default: ${ENV_VAR}, "
             "else $XDG_CACHE_HOME/clusterimg or ~/.cache/clusterimg]")(command)


def cache_arg(cache_dir: Path | None, no_cache: bool):
    """The API's ``cache`` argument for --cache-dir / --no-cache."""
    return False if no_cache else (cache_dir or True)


def work_options(command):
    """--batch-size, --recursive/--no-recursive, --workers, --exhaustive: shared by `run` and `fit`."""
    for option in reversed([
        click.option("--batch-size", type=click.IntRange(min=0), default=api.DEFAULT_BATCH_SIZE, show_default=True,
                     help="Images compared together in the first stage; 0 = one batch."),
        click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subfolders."),
        click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
                     help="Processes for reading images. [default: CPU count]"),
        click.option("--exhaustive", is_flag=True, help="Score every pair instead of the method's candidate search."),
    ]):
        command = option(command)
    return command


scheduler_option = click.option(
    "--scheduler", default=None, metavar="ADDRESS",
    help="Read and compare the images on a Dask cluster: its scheduler's address (tcp://host:8786), "
         "or local:N for N local worker processes (needs `pip install 'clusterimg[dask]'`).")


def check_scheduler_option(scheduler: str | None) -> None:
    """Dask installed and the address well formed, before any work."""
    if scheduler is not None:
        from clusterimg.engine.dask_run import check_scheduler

        check_scheduler(scheduler)


method_option = click.option(
    "--method", "-m", type=click.Choice(sorted(available())), default=api.DEFAULT_METHOD, show_default=True,
    help="Feature backend (see `clusterimg methods`).")
cluster_option = click.option(
    "--cluster", "cluster", type=click.Choice(sorted(available_clusterers())), default=None,
    help="Clustering model. [default: graph for the near-duplicate methods, auto for vector ones]")


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class ThresholdType(click.ParamType):
    """A number between 0 and 1, with a message that says so."""

    name = "threshold"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            number = float(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a number; enter a threshold between 0 and 1", param, ctx)
        if not 0.0 <= number <= 1.0:
            self.fail(f"{value} is not a threshold between 0 and 1", param, ctx)
        return number


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clusterimg")
def main():
    """Sort a folder of photos into clusters of alike images."""


@main.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@method_option
@cluster_option
@click.option("--threshold", "-t", type=ThresholdType(), default=None,
              help="Pairs at least this similar (0..1) are joined. [default: the method's calibrated one]")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder. [default: FOLDER_clustered beside the input; with --transfer none and "
                   "--json or --format, nothing is written]")
@click.option("--transfer", type=click.Choice(TRANSFERS), default="copy", show_default=True,
              help="How files get into the output tree; `none` writes only the manifest.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier clusterimg output in --out.")
@click.option("--resume", is_flag=True,
              help="Finish the interrupted run recorded in --out with its own options, even if they differ.")
@click.option("--exclude", "exclude_globs", multiple=True, metavar="GLOB",
              help="Leave out files and folders whose name or relative path matches GLOB (repeatable).")
@work_options
@click.option("--format", "out_format", type=click.Choice(["json", "csv"]), default=None,
              help="Print the manifest on stdout as JSON, or as CSV (path, cluster, representative, score, "
                   "exact); the summary goes to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--reference", type=click.Path(path_type=Path, file_okay=False), multiple=True,
              help="A folder clustered with the inputs whose images are preferred as representatives and are "
                   "never moved (a move copies them) or deduplicated. Repeatable.")
@click.option("--plot", "with_plots", is_flag=True,
              help="Vector methods: also write OUT/map.png (t-SNE map coloured by cluster) and, with model "
                   "selection, OUT/selection.png (needs `pip install 'clusterimg[plot]'`).")
@click.option("--verbose", "-v", is_flag=True, help="Print the model-selection table of the vector models.")
@click.option("--report", "with_report", is_flag=True,
              help="Also write OUT/report.html (see `clusterimg report`).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@scheduler_option
@cache_options
@model_options
@friendly_errors
def run(folders, method, cluster, threshold, out, transfer, overwrite, resume, exclude_globs, batch_size, recursive,
        workers, exhaustive, out_format, as_json, reference, with_plots, verbose, with_report, quiet, cache_dir,
        no_cache, cache_max_size=None, scheduler=None, **options):
    """Cluster the images in FOLDERS (one or more folders, clustered together)
    and write the clusters to an output folder.

    Features and pair scores are kept in a cache: another run on the same
    folders (at another threshold, or after Ctrl-C) reuses them.
    """
    backend, model = check_options(method, cluster, options)
    check_scheduler_option(scheduler)
    out_format = out_format or ("json" if as_json else None)
    if with_plots:
        if backend.kind != "vector":
            raise click.UsageError(f"--plot draws maps of vector methods; {method} compares pairs "
                                   "(see `clusterimg threshold --plot`)")
        require_matplotlib()  # before the work, not after
    # A pipe (`--transfer none --json | jq`) writes nothing, so it can run again.
    to_disk = not (transfer == "none" and out_format and out is None) or with_report or with_plots
    if out is None:
        if len(folders) > 1 or reference:
            raise click.UsageError("several input folders (or --reference) need --out")
        out = default_out(folders[0])
    bars = tqdm_bars(show_progress(quiet))
    say = (lambda msg: click.echo(printable(msg), err=True)) if (out_format or quiet) else \
        (lambda msg: click.echo(printable(msg)))
    warn = lambda msg: click.echo(f"Warning: {printable(msg)}", err=True)
    roots = api.resolve_inputs(folders, reference)  # a bad input is refused before the output is touched
    if to_disk and not no_cache and (cache_dir or default_cache_dir()).resolve().is_relative_to(out.resolve()):
        raise click.UsageError("the cache folder cannot be inside the output folder (use --cache-dir)")
    command = {"method": method, "transfer": transfer,
               "threshold": (threshold if threshold is not None else backend.default_threshold)
               if model.name == "graph" else None,
               "params": dict(backend.params, batch_size=batch_size, exhaustive=exhaustive)}
    result = None
    with (check_paths([r.path for r in roots], out, resume=resume, command=command,
                      # an earlier --transfer none output holds only its manifest: replacing it loses nothing
                      overwrite=overwrite or (transfer == "none" and _only_a_manifest(out)))
          if to_disk else contextlib.nullcontext(None)) as target:
        if target is not None and target.job is not None:
            job = target.job
            say(f"Finishing the interrupted run recorded in {out} ({job['transfer']} of "
                f"{plural(len(job['clusters']), 'cluster')}); its options are used, not this command's.")
            _on_interrupt("journal", out)
            manifest = finish_job(target.out, job, bars(job["transfer"]), warn)
        else:
            result = api.cluster(
                folders[0] if len(folders) == 1 else folders, method, threshold, cluster=cluster,
                batch_size=batch_size, recursive=recursive, workers=workers, exhaustive=exhaustive,
                cache=cache_arg(cache_dir, no_cache), cache_max_size=cache_max_size, exclude_globs=exclude_globs,
                progress=bars,
                reference=reference, warn=warn, keep_features=with_plots, scheduler=scheduler, **options)
            if not no_cache and not quiet:
                say(cache_line(result))
            if verbose and "model_selection" in result.clustering:
                from clusterimg.clustering.selection import Selection

                chosen = result.clustering["model_selection"]
                for line in Selection(None, chosen["chosen"], chosen["candidates"]).lines():
                    say(line)
            if with_plots:
                for page in draw_plots(result, backend, target.out):
                    say(f"Plot written to {page}")
            manifest = result.manifest(transfer)
            if target is not None:
                if transfer != "none":
                    _on_interrupt("journal", out)
                manifest = write_output(target.out, manifest, bars(transfer), warn)
        if with_report:
            from clusterimg.report import build_report

            page = build_report(out, manifest, workers=workers or os.cpu_count() or 1, bars=bars)
            say(f"Report written to {page}")
    if out_format == "json":
        click.echo(dumps_json(manifest))
    elif out_format == "csv":
        click.echo(manifest_csv(manifest), nl=False)
    if not quiet:
        say(summary_line(manifest, out if to_disk else None))
        if result is not None and result.images == 0 and not recursive:
            below = len(api.find_images(roots, recursive=True)[0])
            if below:
                say(f"Hint: {plural(below, 'image')} in subfolders; drop --no-recursive to read them.")


def printable(text: str) -> str:
    """Text that any terminal encoding can take: surrogate escapes of names
    that are not valid UTF-8 shown as \\udcXX."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _on_interrupt(state: str, out: Path) -> None:  # state: "journal" (more may come)
    """Record what Ctrl-C would leave behind, for friendly_errors' message."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta["clusterimg.interrupted"] = (state, out)


def interrupt_message(state: str | None, out: Path | None, no_cache: bool) -> str:
    """What Ctrl-C left behind, truthfully: the journal of the transfer, the
    cache, or nothing."""
    if state == "journal" and out is not None and (out / PENDING).exists():
        return (f"Interrupted. The plan is kept in {out / PENDING}: run the same command again to finish "
                "the transfer.")
    if no_cache:
        return "Interrupted. Nothing was kept (--no-cache): a new run starts from the beginning."
    return "Interrupted. Run the same command again to resume: what was read so far is in the cache."


def draw_plots(result, backend, out: Path) -> list[Path]:
    """OUT/map.png (every image read, coloured by cluster) and, when a model
    was selected, OUT/selection.png."""
    import numpy as np

    from clusterimg import maps

    paths = sorted(result.features)
    label_of = {m: k for k, c in enumerate(result.clusters) for m in c.members}
    labels = np.array([label_of.get(p, -1) for p in paths])
    X = backend.vectors([result.features[p] for p in paths])
    written = [maps.plot_map(out / "map.png", X, labels, thumbs=[result.source(p) for p in paths],
                             title=f"{result.method}: {len(result.clusters)} clusters")]
    selection = result.clustering.get("model_selection")
    if selection:
        written.append(maps.plot_selection(out / "selection.png", selection["candidates"], selection["chosen"]))
    return written


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 cluster``, ``2 clusters``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def manifest_csv(manifest: dict) -> str:
    """One row per image read: path, cluster, representative, score, exact
    (outliers have an empty cluster)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "cluster", "representative", "score", "exact"])
    for c in manifest["clusters"]:
        for m in c["members"]:
            writer.writerow([m["path"], c["id"], c["representative"], m["score"], str(m.get("exact", False)).lower()])
    for o in manifest["outliers"]:
        writer.writerow([o["path"], "", "", "", "false"])
    return buffer.getvalue()


def _only_a_manifest(out: Path) -> bool:
    try:
        return out.is_dir() and [p.name for p in out.iterdir()] == [MANIFEST]
    except OSError:
        return False


def cache_line(result) -> str:
    """What the cache saved, counted over the images read (exact copies are not read twice)."""
    counts = result.counts
    reused = counts.get("features_reused", 0)
    computed = result.images - counts.get("exact_copies", 0) - reused
    text = f"Cache: features of {plural(reused, 'image')} reused, {computed} computed"
    if counts.get("pairs_reused") or counts.get("pairs_scored"):
        text += (f"; {plural(counts.get('pairs_reused', 0), 'pair score')} reused, "
                 f"{counts.get('pairs_scored', 0)} computed")
    return text + "."


def summary_line(manifest: dict, out: Path | None) -> str:
    s = manifest["stats"]
    if manifest.get("threshold") is not None:
        how = f"{manifest['method']}, threshold {manifest['threshold']:g}"
    else:
        how = f"{manifest['method']}, {manifest.get('clustering', {}).get('model', '?')}"
    exact = s.get("exact_copies", 0)
    line = (f"{plural(s['images'], 'image')} read, {s['skipped']} skipped: {plural(s['clusters'], 'cluster')}, "
            f"{plural(s['outliers'], 'outlier')}"
            + (f" ({plural(exact, 'exact copy', 'exact copies')})" if exact else "")
            + f" in {s['seconds']:.1f} s ({how})")
    return line + (f" -> {out / MANIFEST}" if out is not None else "")


@main.command("threshold")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@method_option
@click.option("--sample", "sample_size", type=click.IntRange(min=2), default=300, show_default=True,
              help="Images drawn at random from FOLDER; all their candidate pairs are scored.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subfolders.")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Processes for reading images. [default: CPU count]")
@click.option("--exhaustive", is_flag=True, help="Score every pair of the sample instead of the candidate search.")
@click.option("--input/--no-input", "ask", default=None,
              help="Ask for a threshold, or print the table and the suggestion and exit. [default: ask when "
                   "stdin is a terminal]")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw the curve into this picture (needs `pip install 'clusterimg[plot]'`), and the "
                   "borderline pairs into NAME-pairs.png.")
@click.option("--examples", type=click.IntRange(min=0), default=3, show_default=True,
              help="Pairs shown just above and just below the chosen threshold.")
@click.option("--run", "run_after", is_flag=True, help="Run the clustering at the chosen threshold.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@cache_options
@model_options
@friendly_errors
@click.pass_context
def threshold_command(ctx, folder, method, sample_size, seed, recursive, workers, exhaustive, ask, plot,
                      examples, run_after, quiet, cache_dir, no_cache, cache_max_size=None, **kwargs):
    """Find a threshold by looking: score a random sample of FOLDER and show
    what each threshold would do, with a suggestion.

    In a terminal it asks for a threshold (Enter takes the suggestion) and
    prints the `clusterimg run` command, or runs it with --run. The features
    and scores computed here are cached, so that run does not repeat them.
    """
    backend, _ = check_options(method, "graph", kwargs)
    if plot is not None:
        require_matplotlib()  # before the work, not after
    options = {k: v for k, v in kwargs.items() if v is not None}
    interactive = sys.stdin.isatty() if ask is None else ask
    sample = th.score_sample(folder, backend, sample_size, seed, recursive=recursive, workers=workers,
                             exhaustive=exhaustive, cache=cache_arg(cache_dir, no_cache),
                             bars=tqdm_bars(show_progress(quiet)), cache_max_size=cache_max_size)
    n = len(sample.paths)
    rows = th.ladder_rows(n, sample.total, sample.i, sample.j, sample.s)
    suggestion = th.suggest(rows, n, default=backend.default_threshold)
    for line in th.table_lines(rows, n, sample.total, suggestion, chart=interactive):
        click.echo(line)
    if suggestion is None:
        click.echo(f"No pair of the sample scores {min(th.LADDER):g} or more: no suggestion "
                   f"({method}'s default is {backend.default_threshold:g}).")
    else:
        click.echo(f"Suggested threshold: {suggestion.threshold:.2f}: {suggestion.reason}.")
    default = suggestion.threshold if suggestion is not None else backend.default_threshold
    chosen = default
    above, below = th.borderline_pairs(sample, chosen, examples)
    show_pairs(folder, chosen, above, below)  # what the choice decides, before asking
    if interactive:
        chosen = click.prompt("Threshold (Enter takes the suggestion)", type=ThresholdType(),
                              default=f"{default:.2f}", show_default=True)
        if chosen != default:
            above, below = th.borderline_pairs(sample, chosen, examples)
            show_pairs(folder, chosen, above, below)
    if plot is not None:
        th.plot_curve(plot, rows, sample.total, suggestion, chosen)
        strip = plot.with_name(f"{plot.stem}-pairs.png")
        if examples:
            th.contact_strip(strip, folder, above, below)
        click.echo(f"Curve written to {plot}" + (f", borderline pairs to {strip}" if examples else ""))
    command = th.run_command(str(folder), method, chosen, options, recursive=recursive, exhaustive=exhaustive,
                             cache_dir=None if cache_dir is None else str(cache_dir), no_cache=no_cache)
    if cache_max_size is not None and not no_cache:
        command += f" --cache-max-size {cache_max_size}"
    if run_after:
        click.echo(f"Running: {command}")
        ctx.invoke(run, folders=(folder,), method=method, threshold=chosen, recursive=recursive, workers=workers,
                   exhaustive=exhaustive, quiet=quiet, cache_dir=cache_dir, no_cache=no_cache,
                   cache_max_size=cache_max_size, **options)
    else:
        click.echo(command)


def show_pairs(folder: Path, threshold: float, above, below) -> None:
    """The sample's pairs just above and just below a threshold, with their paths."""
    if not above and not below:
        return
    click.echo(f"Pairs of the sample just above {threshold:g} (joined):")
    for pair in above:
        click.echo(f"  {pair.score:.3f}  {folder / pair.a}  ~  {folder / pair.b}")
    click.echo(f"Pairs of the sample just below {threshold:g} (not joined):")
    for pair in below:
        click.echo(f"  {pair.score:.3f}  {folder / pair.a}  ~  {folder / pair.b}")


@main.command("methods")
def methods_command():
    """List the feature backends and clustering models, what each is good at, and their options."""
    click.echo("Feature backends (--method):\n")
    for name, cls in available().items():
        click.echo(f"{name:8s} {cls.summary}")
        if cls.kind == "vector":
            click.echo(f"{'':8s} one vector per image; default --cluster auto (--cluster graph: threshold "
                       f"{cls.default_threshold:g} on cosine similarity)")
        else:
            click.echo(f"{'':8s} default threshold {cls.default_threshold:g}")
        for opt in cls.options:
            click.echo(f"{'':8s} {opt.flag} (default {opt.default}): {opt.help}")
        click.echo()
    click.echo("Clustering models (--cluster):\n")
    for name, cls in available_clusterers().items():
        click.echo(f"{name:14s} {cls.summary}" + ("" if cls.needs == "vector" else "  [any method]"))
    options = {o.name: o for cls in available_clusterers().values() for o in cls.options}
    for opt in options.values():
        click.echo(f"{'':14s} {opt.flag} (default {opt.default}): {opt.help}")


# -- report, dedupe, undo (self-contained block) -------------------------------------


@main.command("report")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Processes for making thumbnails. [default: CPU count]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@friendly_errors
def report_command(out, workers, quiet):
    """Write OUT/report.html: every cluster with thumbnails, outliers and
    skipped files, pages, a path filter, and keep/remove ticks that download
    as a decisions file for `clusterimg dedupe --decisions`."""
    import time

    from clusterimg.report import build_report

    started = time.perf_counter()
    page = build_report(out, workers=workers or os.cpu_count() or 1, bars=tqdm_bars(show_progress(quiet)))
    if not quiet:
        click.echo(f"Report written to {page} in {time.perf_counter() - started:.1f} s "
                   f"(open it in a browser; thumbnails in {out / 'thumbnails'})")


@main.command("dedupe")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--keep", type=click.Choice(["best", "largest", "oldest", "newest", "representative"]),
              default="best", show_default=True,
              help="Which image of each cluster stays. best: most pixels, then largest file, then oldest, "
                   "then first path; largest: largest file; oldest/newest: by modification time; "
                   "representative: the cluster's representative.")
@click.option("--decisions", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A decisions file downloaded from report.html (overrides --keep).")
@click.option("--trash", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the other images are moved, under their relative paths. [default: OUT/duplicates]")
@click.option("--dry-run", is_flag=True, help="Print what would be kept and moved; touch nothing.")
@click.option("--input", "on_input", is_flag=True,
              help="Act on the input folder instead of the output tree (the default for --transfer none runs).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@friendly_errors
def dedupe_command(out, keep, decisions, trash, dry_run, on_input, quiet):
    """Keep one image of each cluster of OUT and move the others to a trash
    folder: never deleted, never overwritten, resumable after a crash (run it
    again), and undone by `clusterimg undo OUT`."""
    from clusterimg.dedupe import load_decisions, run_dedupe

    say = (lambda msg: None) if quiet else click.echo
    decided = load_decisions(decisions) if decisions is not None else None
    plan = run_dedupe(out, keep=keep, decisions=decided, target="input" if on_input else None, trash=trash,
                      dry_run=dry_run, bars=tqdm_bars(show_progress(quiet)), say=say)
    for warning in plan.warnings:
        click.echo(f"Warning: {warning}", err=True)
    size = f"{plan.bytes / 1e6:.1f} MB"
    if dry_run:
        for line in plan.lines(out):
            click.echo(line)
        click.echo(f"Dry run: {len(plan.moves)} files ({size}) would be moved to {plan.trash}, "
                   f"{len(plan.kept)} kept; nothing was touched.")
    elif not quiet:
        click.echo(f"{len(plan.moves)} files ({size}) moved to {plan.trash}, {len(plan.kept)} kept "
                   f"({plan.target} files). Undo: clusterimg undo {out}")


@main.command("undo")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@friendly_errors
def undo_command(out, quiet):
    """Put every file the last `clusterimg dedupe OUT` moved back where it was
    (also after an interrupted dedupe)."""
    from clusterimg.dedupe import undo

    restored = undo(out, bars=tqdm_bars(show_progress(quiet)))
    if not quiet:
        click.echo(f"{restored} files put back where they were.")


# -- clusterimg cache info|prune|clear ------------------------------------------------------

cache_dir_option = click.option(
    "--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help=f"The cache folder. [default: ${ENV_VAR}, else $XDG_CACHE_HOME/clusterimg or ~/.cache/clusterimg]")


@main.group("cache")
def cache_group():
    """Show, prune or clear the cache of features and pair scores."""


@cache_group.command("info")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def cache_info_command(cache_dir, as_json):
    """Where the cache is, how big it is, and what it holds per method."""
    from clusterimg import cache_admin as ca

    report = ca.info(cache_dir or default_cache_dir())
    if as_json:
        click.echo(dumps_json(report))
        return
    click.echo(f"Cache: {report['location']}")
    if not report["exists"]:
        click.echo("No cache file yet (it is made by the first `clusterimg run` or `threshold`).")
        return
    cap = "no cap" if report["max_size"] == 0 else f"cap {ca.format_size(report['max_size'])}"
    click.echo(f"Size: {ca.format_size(report['bytes_on_disk'])} on disk, {ca.format_size(report['bytes_in_use'])} "
               f"in use ({cap}; set it with --cache-max-size or ${ca.MAX_SIZE_ENV})")
    if report["outdated"]:
        click.echo("Made by another clusterimg version: it is rebuilt by the next run (or `clusterimg cache clear`).")
        return
    click.echo(f"Files: {report['files']:,} with features")
    if not report["methods"]:
        click.echo("No entries.")
    for m in report["methods"]:
        params = ", ".join(f"{k}={v}" for k, v in m["params"].items())
        note = "" if m["current"] else f"  [clusterimg {m['clusterimg']}: unused, `cache prune` drops it]"
        click.echo(f"  {m['method']} ({params or 'default'}): {m['features']:,} features "
                   f"({ca.format_size(m['feature_bytes'])}), {m['scores']:,} pair scores{note}")


@cache_group.command("prune")
@cache_dir_option
@friendly_errors
def cache_prune_command(cache_dir):
    """Drop entries of files that are gone or changed, and of other clusterimg versions."""
    from clusterimg import cache_admin as ca

    folder = cache_dir or default_cache_dir()
    n = ca.prune(folder)
    click.echo(f"Pruned {n['files']:,} gone or changed file(s): {n['features']:,} features and {n['scores']:,} pair "
               f"scores dropped; {n['other_version_features']:,} features of other clusterimg versions dropped; "
               f"{ca.format_size(n['bytes_freed'])} freed in {folder}.")


@cache_group.command("clear")
@cache_dir_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def cache_clear_command(cache_dir, yes):
    """Delete the cache file (features and scores are computed again when needed)."""
    from clusterimg import cache_admin as ca

    folder = cache_dir or default_cache_dir()
    files = ca.cache_files(folder)
    if not files:
        click.echo(f"No cache in {folder}: nothing to clear.")
        return
    size = ca.format_size(sum(p.stat().st_size for p in files))
    if not yes and not click.confirm(f"Delete the cache in {folder} ({size}: {', '.join(p.name for p in files)})?",
                                     default=False):
        click.echo("Nothing deleted.")
        return
    freed = ca.clear(folder)
    click.echo(f"Cache cleared: {ca.format_size(freed)} freed in {folder}.")


# -- a saved cluster model: fit, label, assign, serve (clusterimg/model.py, clusterimg/http.py) --------


@main.command("fit")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@click.option("--save", "save_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The model file to write (e.g. books.cim).")
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
@method_option
@cluster_option
@click.option("--threshold", "-t", type=ThresholdType(), default=None,
              help="Pairs at least this similar (0..1) are joined, and a new image joins a cluster at this "
                   "score. [default: the method's calibrated one]")
@work_options
@click.option("--radius-quantile", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.95, show_default=True,
              help="Vector models: a new image joins the nearest cluster if it is at most as far from the centroid "
                   "as this quantile of the cluster's members.")
@click.option("--radius-slack", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="Vector models: the radius above, multiplied by this (above 1: fewer images left unassigned).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@scheduler_option
@cache_options
@model_options
@friendly_errors
def fit_command(folder, save_path, overwrite, method, cluster, threshold, batch_size, recursive, workers, exhaustive,
                radius_quantile, radius_slack, quiet, cache_dir, no_cache, scheduler=None, **options):
    """Cluster FOLDER and save the clusters as a model that assigns new images
    (`clusterimg label`, `clusterimg assign`, `clusterimg serve`)."""
    from clusterimg import model as cm

    check_options(method, cluster, options)
    check_scheduler_option(scheduler)
    if save_path.exists() and not overwrite:
        raise click.UsageError(f"{save_path} exists: give another name, or --overwrite to replace it")
    api.resolve_inputs(folder)
    result = api.cluster(folder, method, threshold, cluster=cluster, batch_size=batch_size, recursive=recursive,
                         workers=workers, exhaustive=exhaustive, cache=cache_arg(cache_dir, no_cache),
                         progress=tqdm_bars(show_progress(quiet)), keep_features=True, scheduler=scheduler,
                         **options)
    model = cm.from_result(result, radius_quantile=radius_quantile, radius_slack=radius_slack)
    model.save(save_path, overwrite=overwrite)
    if not quiet:
        click.echo(f"{result.images} images read, {len(result.skipped)} skipped: {len(model.clusters)} clusters, "
                   f"{len(result.outliers)} outliers; rule {model.rule['name']}; model saved to {save_path}")


@main.command("label")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("labels_file", metavar="[LABELS.json]", required=False,
                type=click.Path(path_type=Path, dir_okay=False))
@click.option("--from-folders", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Take labels from a reviewed folder tree: DIR/LABEL/ holds images of the clusters to label LABEL "
                   "(files matched to the model's images by content, else by unique file name).")
@click.option("--show", is_flag=True, help="Print the clusters, their sizes and labels.")
@click.option("--json", "as_json", is_flag=True, help="With --show: as JSON.")
@friendly_errors
def label_command(model_path, labels_file, from_folders, show, as_json):
    """Attach labels to the clusters of MODEL, from LABELS.json
    ({"0": ["book cover"], "1": ["open book"], "-1": []}: ids as `--show`
    prints them, -1 for images in no cluster) or from --from-folders; the
    model file is updated in place. Can be re-run: named clusters get the new
    labels, the others keep theirs."""
    from clusterimg import model as cm

    if labels_file is None and from_folders is None and not show:
        raise click.UsageError("give a labels file, --from-folders DIR or --show")
    if labels_file is not None and from_folders is not None:
        raise click.UsageError("give a labels file or --from-folders, not both")
    model = cm.load(model_path)
    if labels_file is not None:
        model.set_labels(cm.read_labels_file(labels_file))
        model.save(model_path, overwrite=True)
        click.echo(f"Labels set; {sum(1 for c in model.ids if model.labels.get(c))} of {len(model.ids)} clusters "
                   f"labelled in {model_path}", err=show)
    if from_folders is not None:
        counts = model.labels_from_folders(from_folders)
        model.save(model_path, overwrite=True)
        click.echo(f"{counts['files']} files in {from_folders}: {counts['matched']} matched to the model's images, "
                   f"{counts['unmatched']} not; {counts['clusters']} clusters labelled in {model_path}", err=show)
    if show:
        rows = model.describe()
        if as_json:
            click.echo(dumps_json(rows))
        else:
            click.echo(f"{model.method_name} model, rule {model.rule['name']}, {len(model.clusters)} clusters, "
                       f"{len(model.outliers)} outliers")
            for row in rows:
                click.echo(f"{row['id']:>5}  {row['size']:>5} images  {row['representative'] or '-'}  "
                           f"{json.dumps(row['labels'], ensure_ascii=False)}")


@main.command("assign")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Processes for reading images. [default: CPU count]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list: path, cluster (-1: none), labels, score.")
@friendly_errors
def assign_command(model_path, paths, workers, as_json):
    """Give each image of PATHS (files or folders) the cluster of MODEL it
    belongs to (-1: none) and that cluster's labels."""
    from clusterimg import model as cm
    from clusterimg.images import discover

    files = []
    for p in paths:
        if not p.exists():
            raise ClusterimgError(f"not found: {p}", exit_code=2)
        if p.is_dir():
            found, _ = discover(p)
            files += [str(p / rel) for rel in found]
        else:
            files.append(str(p))
    model = cm.load(model_path)
    answers = model.assign(files, workers=workers)
    for a in answers:
        if a.error:
            click.echo(f"Warning: {a.path}: {a.error}", err=True)
    if as_json:
        click.echo(dumps_json([a.to_dict() for a in answers]))
    else:
        for a in answers:
            click.echo(f"{a.cluster:>5}  {a.score:.3f}  {a.path}  {json.dumps(a.labels, ensure_ascii=False)}")


@main.command("serve")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--key", default=None, help="The key clients must send. [default: $KEY] (prefer $KEY: a --key is "
                                          "visible to other users in the process list)")
@click.option("--no-key", is_flag=True, help="Ask for no key (local use only).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with the model loaded once.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=32.0, show_default=True,
              help="Largest request body (413 above).")
@click.option("--max-image-mb", type=click.FloatRange(min=0.001), default=8.0, show_default=True,
              help="Largest image per record (a per-record error above).")
@click.option("--max-records", type=click.IntRange(min=1), default=100, show_default=True,
              help="Most records per request (413 above).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=50_000_000, show_default=True,
              help="Largest image in pixels, read from its header before decoding.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request may take (504 above).")
@click.option("--debug", is_flag=True, help="Verbose server log; each failed record's message in the access log.")
@friendly_errors
def serve_command(model_path, host, port, key, no_key, workers, max_body_mb, max_image_mb, max_records, max_pixels,
                  timeout, debug):
    """Serve MODEL over HTTP: POST /api/extraction (the custom-skill contract
    of Azure Cognitive Search), GET /health."""
    import os

    from clusterimg import http
    from clusterimg import model as cm

    key = key if key is not None else (os.environ.get(http.ENV_KEY) or None)
    if no_key and key is not None:
        raise click.UsageError("--no-key and a key (--key or $KEY) contradict each other")
    if key is None and not no_key:
        raise click.UsageError("no key: give --key, set $KEY, or --no-key for local use")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ClusterimgError("clusterimg serve needs starlette and uvicorn: pip install 'clusterimg[serve]'",
                              exit_code=2)
    model = cm.load(model_path)  # a bad model file is refused before the server starts
    limits = http.Limits(max_body_bytes=int(max_body_mb * (1 << 20)), max_record_bytes=int(max_image_mb * (1 << 20)),
                         max_records=max_records, max_pixels=max_pixels, timeout_s=timeout)
    click.echo(f"Serving {model_path} ({model.method_name}, {len(model.clusters)} clusters) on http://{host}:{port} "
               f"with {workers} worker(s); {'no key' if key is None else 'key required'}", err=True)
    http.serve(str(model_path.resolve()), host=host, port=port, key=key, workers=workers, debug=debug, limits=limits)


# -- evaluate: score a manifest against class labels (self-contained block) --
@main.command("evaluate")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--truth", required=True, type=click.Path(path_type=Path),
              help="A folder of class sub-folders, or a truth.json (../shared/bench's format).")
@click.option("--match", type=click.Choice(["auto", "path", "name"]), default="auto", show_default=True,
              help="Match images by relative path or by file name (auto: whichever finds more).")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
@friendly_errors
def evaluate_command(manifest, truth, match, as_json):
    """Score a clusters.json against known classes: ARI, NMI, pairwise
    precision/recall/F1, purity, best-match F1 per class. Outliers, skipped
    and missing images count as singletons."""
    from clusterimg import evaluate as ev

    labels = ev.load_truth(truth)
    metrics = ev.evaluate(ev.load_manifest(manifest), labels, match=match)
    if as_json:
        click.echo(dumps_json(metrics))
    else:
        for line in ev.format_table(metrics):
            click.echo(line)




# -- train-ae: train the autoencoder feature's model (self-contained block) ------------------------


@main.command("train-ae")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--save", "save_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the model (npz; use it with `run --method autoencoder --ae PATH`).")
@click.option("--loss", type=click.Choice(["mse", "l1", "perceptual"]), default="perceptual", show_default=True,
              help="Reconstruction loss; perceptual compares EfficientNet-Lite0 early features (+ pixel mse).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--latent", type=click.IntRange(min=1), default=10, show_default=True, help="Latent vector size.")
@click.option("--input-size", type=click.IntRange(min=16), default=64, show_default=True,
              help="Side of the square input images (a multiple of 16).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--augment", is_flag=True, help="Random horizontal flips and small shifts while training.")
@click.option("--encoder", type=click.Choice(["conv", "effnet"]), default="effnet", show_default=True,
              help="conv: trained from scratch; effnet: frozen EfficientNet-Lite0 first blocks, then trained layers.")
@click.option("--denoise", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Std of the Gaussian noise added to the training inputs (denoising autoencoder).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="AdamW weight decay (0: Adam).")
@click.option("--color", type=click.Choice(["auto", "gray", "rgb"]), default="auto", show_default=True,
              help="Input channels; auto: gray when every image is.")
@click.option("--resume", "resume_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Continue training a saved (e.g. interrupted) model up to --epochs.")
@click.option("--plot", "plot_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write loss_curves.png and reconstructions.png into this folder (needs matplotlib).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --save file.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subfolders.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@friendly_errors
def train_ae_command(folder, save_path, loss, epochs, latent, input_size, batch_size, lr, seed, augment, encoder,
                     denoise, weight_decay, color, resume_path, plot_dir, overwrite, recursive, quiet):
    """Train a convolutional autoencoder on the images in FOLDER and save it.

    Prints one line per epoch (loss, validation loss on 10 % held out, ETA).
    Ctrl-C keeps the best epoch so far: it is saved, and --resume continues.
    """
    from clusterimg.features.autoencoder import read_images
    from clusterimg.images import discover
    from clusterimg.nn.autoencoder import AEOptions, TrainedAE, fingerprint, is_gray, to_input, train

    if not folder.is_dir():
        raise ClusterimgError(f"input folder not found: {folder}", exit_code=2)
    if save_path.exists() and not overwrite and (resume_path is None or save_path.resolve() != resume_path.resolve()):
        raise ClusterimgError(f"{save_path} exists (use --overwrite to replace it)", exit_code=2)
    resume = TrainedAE.load(resume_path) if resume_path is not None else None
    files, _ = discover(folder, recursive=recursive)
    paths = [str(folder / f) for f in files]
    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    images, _ = read_images(paths, input_size, tqdm_bars(show_progress(quiet)))
    if len(images) < 2:
        raise ClusterimgError(f"at least 2 readable images are needed in {folder} (found {len(images)})", exit_code=2)
    if resume is not None:
        options = AEOptions.from_json(dict(resume.options.to_json(), epochs=epochs))
    else:
        channels = {"gray": 1, "rgb": 3}.get(color) or (1 if all(is_gray(im) for im in images) else 3)
        options = AEOptions(input_size=input_size, channels=channels, latent=latent, loss=loss, epochs=epochs,
                            batch_size=batch_size, lr=lr, seed=seed, augment=augment, encoder=encoder,
                            denoise=denoise, weight_decay=weight_decay)
    try:
        options.check()
    except ValueError as e:
        raise click.UsageError(str(e))
    say(f"Training on {len(images)} images ({options.input_size} px, {'gray' if options.channels == 1 else 'RGB'}, "
        f"loss {options.loss}, latent {options.latent})" + (f", from epoch {resume.epochs_done}" if resume else ""))
    x = to_input(images, options.input_size, options.channels)

    def line(r):
        val = "-" if r.val_loss is None else f"{r.val_loss:.5f}"
        eta = f"{int(r.eta // 60)}:{int(r.eta % 60):02d}"
        say(f"epoch {r.epoch}/{r.epochs}  loss {r.loss:.5f}  val {val}  {r.seconds:.1f} s  ETA {eta}"
            + ("  *" if r.best else ""))

    model = train(x, options, progress=line, resume=resume, folder_fingerprint=fingerprint(paths))
    model.save(save_path)
    if model.interrupted:
        click.echo(f"\nInterrupted: the best epoch so far is saved in {save_path}. Resume with: clusterimg train-ae "
                   f"{folder} --save {save_path} --resume {save_path} --epochs {epochs}", err=True)
        sys.exit(130)
    say(f"Saved {save_path} ({model.epochs_done} epochs; reconstruction mse {model.reconstruction_error(x):.5f})")
    if plot_dir is not None:
        from clusterimg.nn.ae_plots import plot_training

        written = plot_training(plot_dir, model, x)
        say("Plots: " + ", ".join(str(p) for p in written))
