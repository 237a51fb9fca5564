"""The README keeps its promises: a reference that matches the code, the two commands, a working example."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GENERATOR = ROOT / "scripts" / "gen_reference.py"
PLUGINS = Path(__file__).parent / "plugins"

pytestmark = pytest.mark.timeout(60)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH: a child sees only what is installed, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def generator(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, env=clean_env(**env), timeout=50
    )


def section(text: str, title: str) -> str:
    """The body of the `## title` section of a markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match is not None, f"README has no '## {title}' section"
    return match[1]


def example_files(text: str) -> dict[str, str]:
    """The files of the README's example: each `<!-- file: PATH -->` marker and the code block after it."""
    found = re.findall(r"<!-- file: (\S+) -->\n.*?```[a-z]*\n(.*?)```", text, re.S)
    return dict(found)


# -- the generated reference ----------------------------------------------------------------------


def test_the_reference_section_is_what_the_code_generates() -> None:
    done = generator("--check")
    assert done.returncode == 0, (
        f"README.md's topology reference is stale: run scripts/gen_reference.py\n{done.stdout}{done.stderr}"
    )


def test_check_mode_reports_a_stale_reference_with_a_diff_and_changes_nothing(tmp_path: Path) -> None:
    text = README.read_text()
    stale = text.replace("| `rate` |", "| `speed` |", 1)
    assert stale != text
    copy = tmp_path / "README.md"
    copy.write_text(stale)
    done = generator("--check", "--readme", str(copy))
    assert done.returncode == 1
    assert "-| `speed` |" in done.stdout
    assert "+| `rate` |" in done.stdout
    assert copy.read_text() == stale


def test_the_generator_rewrites_only_the_text_between_the_markers(tmp_path: Path) -> None:
    text = README.read_text()
    start, end = text.index("<!-- reference:start -->"), text.index("<!-- reference:end -->")
    emptied = text[: start + len("<!-- reference:start -->")] + "\nold\n" + text[end:]
    copy = tmp_path / "README.md"
    copy.write_text(emptied)
    done = generator("--readme", str(copy))
    assert done.returncode == 0, done.stderr
    assert copy.read_text() == text


def test_the_reference_leaves_out_actors_that_only_the_tests_register() -> None:
    entry_points = (PLUGINS / "edgeflow_testplugins-0.1.dist-info" / "entry_points.txt").read_text()
    test_types = re.findall(r"^(?:source|operator|sink|connection)\.(\w+) =", entry_points, re.M)
    assert test_types
    # With tests/plugins on the path the test actors are registered, as they are inside pytest...
    probe = subprocess.run(
        [sys.executable, "-c", "from edgeflow.registry import Registry; print(Registry().types('sink'))"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(PLUGINS)),
        timeout=30,
    )
    assert any(t in probe.stdout for t in test_types), probe
    # ...and still the reference does not document them.
    done = generator("--print", PYTHONPATH=str(PLUGINS))
    assert done.returncode == 0, done.stderr
    headings = re.findall(r"^#### \w+ `(\w+)`", done.stdout, re.M)
    assert headings
    assert not set(headings) & set(test_types)


# -- the two commands -----------------------------------------------------------------------------


def test_the_readme_gives_two_commands_demo_then_test() -> None:
    body = section(README.read_text(), "The two commands")
    blocks = [b.strip() for b in re.findall(r"```sh\n(.*?)```", body, re.S)]
    assert blocks == ["scripts/dev.sh demo", "scripts/dev.sh test"]


def test_ci_runs_the_readme_test_command() -> None:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln.removeprefix("exec ").strip() for ln in lines if ln and not ln.startswith("#")]
    assert "scripts/dev.sh test" in commands


def test_dev_sh_refuses_an_unknown_command_naming_the_two() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "dev.sh"), "nonsense"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 2
    assert "demo" in done.stderr
    assert "test" in done.stderr


# -- the "Writing an actor" example ---------------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The README's example plugin written out, registered as pip would (a .dist-info with its entry points)."""
    files = example_files(README.read_text())
    assert set(files) >= {
        "edgeflow-example/pyproject.toml",
        "edgeflow-example/edgeflow_example/__init__.py",
        "edgeflow-example/tests/test_example.py",
        "edgeflow-example/calibrated.toml",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    root = tmp_path / "edgeflow-example"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    entry_points = project["project"]["entry-points"]["edgeflow.actors"]
    info = root / "edgeflow_example-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['project']['name']}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[edgeflow.actors]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    return root


def test_the_example_plugin_passes_its_own_tests(example: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_example.py"],
        capture_output=True,
        text=True,
        cwd=example,
        env=clean_env(PYTHONPATH=str(example)),
        timeout=50,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout


def test_the_example_topology_runs_with_the_plugin_found_through_its_entry_points(example: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgeflow.cli", "run", "calibrated.toml"],
        capture_output=True,
        text=True,
        cwd=example,
        env=clean_env(PYTHONPATH=str(example)),
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    with (example / "readings.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert [int(seq) for _, seq, _ in rows] == list(range(100))
