"""Command line: parse options, call the library API, print, exit codes. No logic lives here."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from clusterimg import __version__, api
from clusterimg import thresholds as th
from clusterimg.cache import ENV_VAR, default_cache_dir
from clusterimg.clustering import available_clusterers
from clusterimg.errors import ClusterimgError
from clusterimg.features import available
from clusterimg.output import TRANSFERS, finish_job, pending_job, prepare_out_dir, write_output
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


def check_options(method: str, cluster: str | None, options: dict) -> None:
    """Refuse options that do not fit the method and model, before any work."""
    try:
        api.configure(method, cluster, **options)
    except ValueError as e:
        raise click.UsageError(str(e))


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


def cache_options(command):
    """--cache-dir and --no-cache, shared by `run` and `threshold`."""
    command = click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")(command)
    return click.option(
        "--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
        help=f"Where features and pair scores are kept between runs. [default: ${ENV_VAR}, "
             "else $XDG_CACHE_HOME/clusterimg or ~/.cache/clusterimg]")(command)


def cache_arg(cache_dir: Path | None, no_cache: bool):
    """The API's ``cache`` argument for --cache-dir / --no-cache."""
    return False if no_cache else (cache_dir or True)


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
@click.argument("folder", type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@method_option
@cluster_option
@click.option("--threshold", "-t", type=ThresholdType(), default=None,
              help="Pairs at least this similar (0..1) are joined. [default: the method's calibrated one]")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder. [default: FOLDER_clustered beside the input]")
@click.option("--transfer", type=click.Choice(TRANSFERS), default="copy", show_default=True,
              help="How files get into the output tree; `none` writes only the manifest.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier clusterimg output in --out.")
@click.option("--batch-size", type=click.IntRange(min=0), default=api.DEFAULT_BATCH_SIZE, show_default=True,
              help="Images compared together in the first stage; 0 = one batch.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subfolders.")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Processes for reading images. [default: CPU count]")
@click.option("--exhaustive", is_flag=True, help="Score every pair instead of the method's candidate search.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout (the summary goes to stderr).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@cache_options
@model_options
@friendly_errors
def run(folder, method, cluster, threshold, out, transfer, overwrite, batch_size, recursive, workers, exhaustive,
        as_json, quiet, cache_dir, no_cache, **options):
    """Cluster the images in FOLDER and write the clusters to an output folder.

    Features and pair scores are kept in a cache: another run on the same
    folder (at another threshold, or after Ctrl-C) reuses them.
    """
    check_options(method, cluster, options)
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
        api.resolve_inputs(folder)  # a bad input is refused before the output folder is touched
        inside = _is_inside(out, folder)
        if not no_cache and _is_inside(cache_dir or default_cache_dir(), out):
            raise click.UsageError("the cache folder cannot be inside the output folder (use --cache-dir)")
        prepare_out_dir(out, overwrite)
        result = api.cluster(
            folder, method, threshold, cluster=cluster, batch_size=batch_size, recursive=recursive,
            workers=workers, exhaustive=exhaustive, cache=cache_arg(cache_dir, no_cache),
            exclude=out if inside else None, progress=bars, **options)
        if not no_cache and not quiet:
            say(cache_line(result.counts))
        manifest = result.manifest(transfer)
        write_output(out, manifest, bars(transfer), warn)
    if as_json:
        click.echo(json.dumps(manifest, indent=1, ensure_ascii=False, allow_nan=False))
    if not quiet:
        say(summary_line(manifest, out))


def cache_line(counts: dict) -> str:
    text = (f"Cache: {counts.get('features_reused', 0)} images' features reused, "
            f"{counts.get('features_read', 0)} read")
    if counts.get("pairs_reused") or counts.get("pairs_scored"):
        text += f"; {counts.get('pairs_reused', 0)} pair scores reused, {counts.get('pairs_scored', 0)} computed"
    return text + "."


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def summary_line(manifest: dict, out: Path) -> str:
    s = manifest["stats"]
    if manifest.get("threshold") is not None:
        how = f"{manifest['method']}, threshold {manifest['threshold']:g}"
    else:
        how = f"{manifest['method']}, {manifest.get('clustering', {}).get('model', '?')}"
    return (f"{s['images']} images read, {s['skipped']} skipped: {s['clusters']} clusters, "
            f"{s['outliers']} outliers in {s['seconds']:.1f} s ({how}) -> {out / 'clusters.json'}")


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
                      examples, run_after, quiet, cache_dir, no_cache, **kwargs):
    """Find a threshold by looking: score a random sample of FOLDER and show
    what each threshold would do, with a suggestion.

    In a terminal it asks for a threshold (Enter takes the suggestion) and
    prints the `clusterimg run` command, or runs it with --run. The features
    and scores computed here are cached, so that run does not repeat them.
    """
    check_options(method, "graph", kwargs)
    backend, _ = api.configure(method, "graph", **kwargs)
    options = {k: v for k, v in kwargs.items() if v is not None}
    interactive = sys.stdin.isatty() if ask is None else ask
    sample = th.score_sample(folder, backend, sample_size, seed, recursive=recursive, workers=workers,
                             exhaustive=exhaustive, cache=cache_arg(cache_dir, no_cache),
                             bars=tqdm_bars(show_progress(quiet)))
    n = len(sample.paths)
    rows = th.ladder_rows(n, sample.total, sample.i, sample.j, sample.s)
    suggestion = th.suggest(rows, n)
    for line in th.table_lines(rows, n, sample.total, suggestion, chart=interactive):
        click.echo(line)
    if suggestion is None:
        click.echo(f"No pair of the sample scores {min(th.LADDER):g} or more: no suggestion "
                   f"({method}'s default is {backend.default_threshold:g}).")
    else:
        click.echo(f"Suggested threshold: {suggestion.threshold:.2f}: {suggestion.reason}.")
    default = suggestion.threshold if suggestion is not None else backend.default_threshold
    chosen = default
    if interactive:
        chosen = click.prompt("Threshold (Enter takes the suggestion)", type=ThresholdType(),
                              default=f"{default:.2f}", show_default=True)
    if examples:
        above, below = th.borderline_pairs(sample, chosen, examples)
        click.echo(f"Pairs of the sample just above {chosen:g} (joined):")
        for pair in above:
            click.echo(f"  {pair.score:.3f}  {pair.a}  ~  {pair.b}")
        click.echo(f"Pairs of the sample just below {chosen:g} (not joined):")
        for pair in below:
            click.echo(f"  {pair.score:.3f}  {pair.a}  ~  {pair.b}")
    if plot is not None:
        th.plot_curve(plot, rows, sample.total, suggestion, chosen)
        strip = plot.with_name(f"{plot.stem}-pairs.png")
        if examples:
            th.contact_strip(strip, folder, above, below)
        click.echo(f"Curve written to {plot}" + (f", borderline pairs to {strip}" if examples else ""))
    command = th.run_command(str(folder), method, chosen, options, recursive=recursive, exhaustive=exhaustive,
                             cache_dir=None if cache_dir is None else str(cache_dir), no_cache=no_cache)
    if run_after:
        click.echo(f"Running: {command}")
        ctx.invoke(run, folder=folder, method=method, threshold=chosen, recursive=recursive, workers=workers,
                   exhaustive=exhaustive, quiet=quiet, cache_dir=cache_dir, no_cache=no_cache, **options)
    else:
        click.echo(command)


@main.command("methods")
def methods_command():
    """List the similarity backends, what each is good at, and their options."""
    for name, cls in available().items():
        click.echo(f"{name:8s} {cls.summary}")
        click.echo(f"{'':8s} default threshold {cls.default_threshold:g}")
        for opt in cls.options:
            click.echo(f"{'':8s} {opt.flag} (default {opt.default}): {opt.help}")
        click.echo()


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
@click.option("--batch-size", type=click.IntRange(min=0), default=api.DEFAULT_BATCH_SIZE, show_default=True,
              help="Images compared together in the first stage; 0 = one batch.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subfolders.")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Processes for reading images. [default: CPU count]")
@click.option("--exhaustive", is_flag=True, help="Score every pair instead of the method's candidate search.")
@click.option("--radius-quantile", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.95, show_default=True,
              help="Vector models: a new image joins the nearest cluster if it is at most as far from the centroid "
                   "as this quantile of the cluster's members.")
@click.option("--radius-slack", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="Vector models: the radius above, multiplied by this (above 1: fewer images left unassigned).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@cache_options
@model_options
@friendly_errors
def fit_command(folder, save_path, overwrite, method, cluster, threshold, batch_size, recursive, workers, exhaustive,
                radius_quantile, radius_slack, quiet, cache_dir, no_cache, **options):
    """Cluster FOLDER and save the clusters as a model that assigns new images
    (`clusterimg label`, `clusterimg assign`, `clusterimg serve`)."""
    from clusterimg import model as cm

    check_options(method, cluster, options)
    if save_path.exists() and not overwrite:
        raise click.UsageError(f"{save_path} exists: give another name, or --overwrite to replace it")
    api.resolve_inputs(folder)
    result = api.cluster(folder, method, threshold, cluster=cluster, batch_size=batch_size, recursive=recursive,
                         workers=workers, exhaustive=exhaustive, cache=cache_arg(cache_dir, no_cache),
                         progress=tqdm_bars(show_progress(quiet)), keep_features=True, **options)
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
            click.echo(json.dumps(rows, indent=1, ensure_ascii=False))
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
        click.echo(json.dumps([a.to_dict() for a in answers], indent=1, ensure_ascii=False))
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
    import json as json_module

    from clusterimg import evaluate as ev

    labels = ev.load_truth(truth)
    metrics = ev.evaluate(ev.load_manifest(manifest), labels, match=match)
    if as_json:
        click.echo(json_module.dumps(metrics, indent=1))
    else:
        for line in ev.format_table(metrics):
            click.echo(line)
