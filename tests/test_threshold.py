"""`clusterimg threshold`: the sample, the ladder, the suggestion, the prompt
and the command it prints."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from clusterimg import thresholds as th
from clusterimg.cli import main


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERIMG_CACHE_DIR", str(tmp_path / "cache"))


def test_sample_is_seeded_uniform_and_sorted():
    paths = [f"img{k:04d}.jpg" for k in range(1000)]
    a = th.sample_paths(paths, 100, seed=1)
    assert a == th.sample_paths(list(reversed(paths)), 100, seed=1) == sorted(a)
    assert a != th.sample_paths(paths, 100, seed=2)
    assert max(a) > "img0500.jpg"  # not the first (or smallest) files
    assert th.sample_paths(paths[:5], 100, seed=1) == paths[:5]


def rows_for(groups: int, group_size: int, noise_from: float, n: int = 200):
    """A sample with ``groups`` near-duplicate groups scoring 0.95..0.8 and
    unrelated pairs whose number explodes below ``noise_from``."""
    rng = np.random.default_rng(0)
    i, j, s = [], [], []
    for g in range(groups):
        members = list(range(g * group_size, (g + 1) * group_size))
        for a in members:
            for b in members:
                if a < b:
                    i.append(a), j.append(b), s.append(rng.uniform(0.8, 0.95))
    for k in range(3000):  # noise: many pairs at low scores, few near noise_from
        a, b = sorted(rng.choice(n, 2, replace=False))
        i.append(a), j.append(b), s.append(noise_from - rng.exponential(0.08))
    return th.ladder_rows(n, 2 * n, np.array(i), np.array(j), np.array(s))


def test_suggestion_lies_above_the_chaining():
    rows = rows_for(groups=20, group_size=4, noise_from=0.6)
    sug = th.suggest(rows, 200)
    assert sug is not None and 0.6 <= sug.threshold <= 0.8
    assert "largest cluster" in sug.reason
    at = {r.threshold: r for r in rows}
    assert at[0.8].clusters == 20 and at[0.8].largest == 4
    assert at[0.8].est_clusters == 40 and at[0.8].est_pairs > at[0.8].pairs  # scaled to 400 images


def test_no_pairs_no_suggestion():
    rows = th.ladder_rows(10, 10, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    assert th.suggest(rows, 10) is None


def test_borderline_pairs_on_each_side():
    sample = th.SampleScores(["a", "b", "c", "d"], 4, np.array([0, 0, 1, 2]), np.array([1, 2, 3, 3]),
                             np.array([0.9, 0.71, 0.69, 0.5]))
    above, below = th.borderline_pairs(sample, 0.7, 1)
    assert [(p.a, p.b, p.score) for p in above] == [("a", "c", 0.71)]
    assert [(p.a, p.b, p.score) for p in below] == [("b", "d", 0.69)]


def test_run_command_is_quoted_and_complete():
    cmd = th.run_command("my photos", "orb", 0.62, {"orb_features": 800, "candidates": None},
                         recursive=False, cache_dir="/tmp/c")
    assert cmd == "clusterimg run 'my photos' --method orb --threshold 0.62 --orb-features 800 --no-recursive " \
                  "--cache-dir /tmp/c"


def test_interactive_refuses_bad_entries_then_prints_the_command(photo_folder):
    result = CliRunner().invoke(main, ["threshold", str(photo_folder), "--method", "phash", "--input", "-q"],
                                input="abc\n1.5\n0.9\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "threshold  similar pairs  images clustered  clusters" in out
    assert "Suggested threshold:" in out
    assert "Error: 'abc' is not a number" in out
    assert "Error: 1.5 is not a threshold between 0 and 1" in out
    assert out.count("Threshold (Enter takes the suggestion)") == 3
    assert out.strip().splitlines()[-1] == f"clusterimg run {photo_folder} --method phash --threshold 0.9"


def test_enter_takes_the_suggestion(photo_folder):
    result = CliRunner().invoke(main, ["threshold", str(photo_folder), "--input", "-q", "--examples", "0"],
                                input="\n")
    assert result.exit_code == 0, result.output
    suggested = float(result.output.split("Suggested threshold: ")[1].split(":")[0])
    assert result.output.strip().splitlines()[-1].endswith(f"--threshold {suggested:g}")


def test_no_input_prints_table_and_suggestion_without_asking(photo_folder):
    result = CliRunner().invoke(main, ["threshold", str(photo_folder), "--method", "phash", "-q"])  # stdin: no terminal
    assert result.exit_code == 0, result.output
    assert "Threshold (Enter" not in result.output
    assert "<- suggested" in result.output
    assert "Pairs of the sample just above" in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"clusterimg run {photo_folder} --method phash")


def test_threshold_then_run_reuses_the_features(photo_folder, tmp_path):
    runner = CliRunner()
    first = runner.invoke(main, ["threshold", str(photo_folder), "--no-input", "--run", "--sample", "50"])
    assert first.exit_code == 0, first.output
    assert "Cache: features of 11 images reused, 0 computed" in first.output
    assert (photo_folder.parent / "photos_clustered" / "clusters.json").is_file()


def test_plot_needs_matplotlib_or_writes_pictures(photo_folder, tmp_path):
    plot = tmp_path / "curve.png"
    result = CliRunner().invoke(main, ["threshold", str(photo_folder), "-q", "--no-input", "--plot", str(plot)])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.exit_code == 2 and "pip install 'clusterimg[plot]'" in result.output
        return
    assert result.exit_code == 0, result.output
    assert plot.is_file() and (tmp_path / "curve-pairs.png").is_file()
