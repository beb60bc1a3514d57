"""Command line: parse options, call the pipeline, print. No logic lives here."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from clusterimg import __version__
from clusterimg import thresholds as th
from clusterimg.cache import ENV_VAR, default_cache_dir, open_cache
from clusterimg.errors import ClusterimgError
from clusterimg.features import available, get_method
from clusterimg.output import TRANSFERS, build_manifest, finish_job, pending_job, prepare_out_dir, write_output
from clusterimg.engine.pipeline import cluster_folder
from clusterimg.progress import tqdm_bars


def backend_options(command):
    """Add every backend's own options (``--hash-size`` ...) to a command.

    Options of the same name in several backends share one flag; its default
    is None so each backend falls back to its own default.
    """
    defaults: dict[str, dict[str, object]] = {}  # option -> {backend: its default}
    specs = {}
    for name, cls in available().items():
        for opt in cls.options:
            defaults.setdefault(opt.name, {})[name] = opt.default
            specs.setdefault(opt.name, opt)
    for opt_name in sorted(specs, reverse=True):
        opt = specs[opt_name]
        flag = "--" + opt_name.replace("_", "-")
        decl = [f"{flag}/--no-{flag[2:]}"] if opt.type is bool else [flag]
        per_backend = defaults[opt_name]
        if len(set(map(str, per_backend.values()))) == 1:
            where = f"{', '.join(per_backend)}; default {opt.default}"
        else:
            where = "default " + ", ".join(f"{b} {d}" for b, d in per_backend.items())
        command = click.option(
            *decl, opt_name, type=None if opt.type is bool else (click.Choice(opt.choices) if opt.choices else opt.type),
            default=None,
            help=f"{opt.help} [{where}]",
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


def cache_options(command):
    """--cache-dir and --no-cache, shared by `run` and `threshold`."""
    command = click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")(command)
    return click.option(
        "--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
        help=f"Where features and pair scores are kept between runs. [default: ${ENV_VAR}, "
             "else $XDG_CACHE_HOME/clusterimg or ~/.cache/clusterimg]")(command)


def make_backend(method: str, kwargs: dict):
    options = split_backend_options(method, kwargs)
    try:
        return get_method(method, **options), options
    except ValueError as e:
        raise click.UsageError(str(e))


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
@cache_options
@backend_options
@friendly_errors
def run(folder, method, threshold, out, transfer, overwrite, batch_size, recursive, workers, exhaustive,
        as_json, quiet, cache_dir, no_cache, **kwargs):
    """Cluster the images in FOLDER and write the clusters to an output folder.

    Features and pair scores are kept in a cache: another run on the same
    folder (at another threshold, or after Ctrl-C) reuses them.
    """
    backend, _ = make_backend(method, kwargs)
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
        if not no_cache and _is_inside(cache_dir or default_cache_dir(), out):
            raise click.UsageError("the cache folder cannot be inside the output folder (use --cache-dir)")
        prepare_out_dir(out, overwrite)
        with open_cache(backend, cache_dir, enabled=not no_cache) or _nothing() as cache:
            result = cluster_folder(
                folder, backend, threshold, batch_size=batch_size, recursive=recursive,
                workers=workers or os.cpu_count() or 1, exhaustive=exhaustive,
                exclude=out if inside else None, bars=bars, cache=cache,
            )
        if cache is not None and not quiet:
            say(cache_line(result.counts))
        params = dict(backend.params, batch_size=batch_size, exhaustive=exhaustive)
        manifest = build_manifest(result, method=method, threshold=threshold, params=params,
                                  input_arg=str(folder), transfer=transfer)
        write_output(folder, out, manifest, bars(transfer), warn)
    if as_json:
        click.echo(json.dumps(manifest, indent=1, ensure_ascii=False))
    if not quiet:
        say(summary_line(manifest, out))


class _nothing:
    """A stand-in context for "no cache"."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


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
    return (f"{s['images']} images read, {s['skipped']} skipped: {s['clusters']} clusters, "
            f"{s['outliers']} outliers in {s['seconds']:.1f} s ({manifest['method']}, threshold "
            f"{manifest['threshold']:g}) -> {out / 'clusters.json'}")


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


@main.command("threshold")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=True, dir_okay=True))
@click.option("--method", "-m", type=click.Choice(sorted(available())), default="phash", show_default=True,
              help="Similarity backend (see `clusterimg methods`).")
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
@backend_options
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
    backend, options = make_backend(method, kwargs)
    interactive = sys.stdin.isatty() if ask is None else ask
    bars = tqdm_bars(show_progress(quiet))
    with open_cache(backend, cache_dir, enabled=not no_cache) or _nothing() as cache:
        sample = th.score_sample(folder, backend, sample_size, seed, recursive=recursive,
                                 workers=workers or os.cpu_count() or 1, exhaustive=exhaustive,
                                 cache=cache, bars=bars)
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
            flag = "--" + opt.name.replace("_", "-")
            click.echo(f"{'':8s} {flag} (default {opt.default}): {opt.help}")
        click.echo()


# -- train-ae: train the autoencoder feature's model (self-contained block) ------------------------


@main.command("train-ae")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--save", "save_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the model (npz; use it with `run --method autoencoder --ae PATH`).")
@click.option("--loss", type=click.Choice(["mse", "l1", "perceptual"]), default="mse", show_default=True,
              help="Reconstruction loss; perceptual compares EfficientNet-Lite0 early features (+ pixel mse).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--latent", type=click.IntRange(min=1), default=64, show_default=True, help="Latent vector size.")
@click.option("--input-size", type=click.IntRange(min=16), default=64, show_default=True,
              help="Side of the square input images (a multiple of 16).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--augment", is_flag=True, help="Random horizontal flips and small shifts while training.")
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
def train_ae_command(folder, save_path, loss, epochs, latent, input_size, batch_size, lr, seed, augment, color,
                     resume_path, plot_dir, overwrite, recursive, quiet):
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
                            batch_size=batch_size, lr=lr, seed=seed, augment=augment)
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
