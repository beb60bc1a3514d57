"""The library API: the same clusters as the command line, from any caller."""
from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import clusterimg
from clusterimg import api
from clusterimg.cli import main
from conftest import make_photo, write_photo

REPO = Path(__file__).resolve().parent.parent


def run_python(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], input=stdin, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def pool_folder(tmp_path_factory) -> Path:
    """Enough small images for a real worker pool: 24 shots, each with a
    resized copy, and 20 unrelated images."""
    root = tmp_path_factory.mktemp("pool") / "photos"
    for k in range(24):
        im = make_photo(500 + k, size=(128, 96))
        write_photo(root / f"s{k:02d}.png", im)
        write_photo(root / "copies" / f"s{k:02d}_small.jpg", im.resize((96, 72)), quality=90)
    for k in range(20):
        write_photo(root / "other" / f"o{k:02d}.png", make_photo(900 + k, size=(128, 96)))
    return root


PRINT_CLUSTERS = """
import clusterimg
result = clusterimg.cluster({folder!r}, method="phash", workers=2, cache=False)
for c in result.clusters:
    print(c.representative, len(c.members), " ".join(c.members))
print("outliers", len(result.outliers))
"""


def clusters_of_cli_run(folder: Path, out: Path) -> str:
    done = CliRunner().invoke(main, ["run", str(folder), "--out", str(out), "--transfer", "none", "-q",
                                     "--no-cache"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "clusters.json").read_text())
    lines = [f"{c['representative']} {len(c['members'])} {' '.join(m['path'] for m in c['members'])}"
             for c in manifest["clusters"]]
    return "\n".join(lines + [f"outliers {len(manifest['outliers'])}"]) + "\n"


def test_python_from_stdin_prints_the_clusters_of_clusterimg_run(pool_folder, tmp_path):
    # `python -` re-imports nothing in the workers (there is no file to re-import)
    assert len(list(pool_folder.rglob("*.*"))) >= 64  # the worker pool is used
    done = run_python(["-"], tmp_path, stdin=PRINT_CLUSTERS.format(folder=str(pool_folder)))
    assert done.returncode == 0, done.stderr
    expected = clusters_of_cli_run(pool_folder, tmp_path / "out")
    assert done.stdout == expected
    assert expected.count("\n") == 25  # 24 clusters of a shot and its copy, and the outliers line


def test_a_script_without_a_main_guard_runs_once(pool_folder, tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(PRINT_CLUSTERS.format(folder=str(pool_folder)))
    done = run_python([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("outliers") == 1  # the workers did not run the script again
    assert done.stdout == clusters_of_cli_run(pool_folder, tmp_path / "out")


def test_code_without_a_file_like_a_notebook_cell(pool_folder, tmp_path):
    done = run_python(["-c", PRINT_CLUSTERS.format(folder=str(pool_folder))], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == clusters_of_cli_run(pool_folder, tmp_path / "out")


def test_same_result_from_the_api_and_written_tree(photo_folder, tmp_path):
    result = clusterimg.cluster(photo_folder, method="phash", cache=False)
    assert [sorted(c.members) for c in result.clusters] == [
        ["b/two.png", "b/two_bright.jpg", "b/two_q30.jpg"], ["a/one.jpg", "a/one_small.jpg"],
        ["c/three.jpg", "d/three.jpg"]]
    assert result.method == "phash" and result.threshold == 0.8
    manifest = result.write(tmp_path / "out", transfer="copy")
    assert json.loads((tmp_path / "out" / "clusters.json").read_text())["clusters"] == manifest["clusters"]
    assert (tmp_path / "out" / "cluster_0001" / "two.png").read_bytes() == (photo_folder / "b/two.png").read_bytes()
    text = json.loads(result.to_json())
    assert text["clusters"][0]["members"][0]["output"] is None  # to_json plans no files
    assert [c["representative"] for c in text["clusters"]] == [c.representative for c in result.clusters]
    with pytest.raises(clusterimg.ClusterimgError) as refused:
        result.write(tmp_path / "out")
    assert refused.value.exit_code == 2


def test_several_folders_are_clustered_together(photo_folder, tmp_path):
    extra = tmp_path / "extra"
    write_photo(extra / "one_again.jpg", make_photo(1), quality=88)  # a copy of photos/a/one.jpg
    result = clusterimg.cluster([photo_folder, extra], cache=False)
    assert ["extra/one_again.jpg", "photos/a/one.jpg", "photos/a/one_small.jpg"] in [c.members for c in result.clusters]
    manifest = result.write(tmp_path / "out", transfer="copy")
    assert manifest["roots"] == {"photos": str(photo_folder.resolve()), "extra": str(extra.resolve())}
    copied = tmp_path / "out" / "cluster_0001"  # ties in size go by first path: extra/ before photos/
    assert sorted(p.name for p in copied.iterdir()) == ["one.jpg", "one_again.jpg", "one_small.jpg"]
    assert (extra / "one_again.jpg").exists()  # a copy leaves the inputs alone


def test_a_list_of_files(photo_folder):
    files = [photo_folder / "a" / "one.jpg", photo_folder / "a" / "one_small.jpg", photo_folder / "single_0.jpg"]
    result = clusterimg.cluster(files, cache=False)
    assert [c.members for c in result.clusters] == [["a/one.jpg", "a/one_small.jpg"]]
    assert result.outliers == ["single_0.jpg"] and result.images == 3


@pytest.mark.parametrize("call, message", [
    (lambda p: clusterimg.cluster(p / "missing"), "input folder not found"),
    (lambda p: clusterimg.cluster([p, p / "a" / "one.jpg"]), "not both"),
    (lambda p: clusterimg.cluster(p, method="nope"), "unknown method 'nope'"),
    (lambda p: clusterimg.cluster(p, method="phash", hash_size=3), "--hash-size must be between 4 and 32"),
    (lambda p: clusterimg.cluster(p, method="orb", hash_size=8), "--hash-size does not apply to --method orb"),
    (lambda p: clusterimg.cluster(p, threshold=float("nan")), "threshold must be a number between 0 and 1"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(photo_folder, call, message):
    with pytest.raises(clusterimg.ClusterimgError) as err:
        call(photo_folder)
    assert message in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2


def test_progress_goes_through_the_callback(photo_folder):
    seen = []

    class Bar:
        def __init__(self, desc, total):
            self.desc, self.total, self.done = desc, total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            seen.append((self.desc, self.total, self.done))

        def update(self, k):
            self.done += k

    clusterimg.cluster(photo_folder, cache=False, progress=lambda desc: (lambda total: Bar(desc, total)))
    assert ("reading images", 11, 11) in seen


def test_public_names_are_documented():
    for name in clusterimg.__all__:
        assert getattr(clusterimg, name).__doc__ or name == "__version__", name
    assert "phash" in clusterimg.methods() and "graph" in clusterimg.clustering_models()


def test_docstring_examples_run():
    cwd = os.getcwd()
    os.chdir(REPO)  # the examples use the shipped examples/ folder
    try:
        failed, tried = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    finally:
        os.chdir(cwd)
    assert tried > 0 and failed == 0


def test_readme_python_examples_run(tmp_path):
    """Every ```python block of the README's "Python API" section runs, in a
    folder where examples/ is the shipped one, and prints what the README shows."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    (tmp_path / "examples").symlink_to(REPO / "examples")
    for block in blocks:
        code = "\n".join(line for line in block.splitlines() if not line.startswith("# -> "))
        shown = [line[5:] for line in block.splitlines() if line.startswith("# -> ")]
        done = run_python(["-"], tmp_path, stdin=code)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == shown


def test_report_from_the_api_and_from_run(photo_folder, tmp_path):
    result = clusterimg.cluster(photo_folder, cache=False)
    page = result.report(tmp_path / "rep")
    html = page.read_text()
    assert page.name == "report.html" and (tmp_path / "rep" / "clusters.json").is_file()
    assert "b/two_q30.jpg" in html and len(list((tmp_path / "rep" / "thumbnails").glob("*.jpg"))) == 11
    done = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(tmp_path / "run"), "--report",
                                     "--transfer", "none", "--no-cache"])
    assert done.exit_code == 0, done.output
    assert "Report written to" in done.output and (tmp_path / "run" / "report.html").is_file()
