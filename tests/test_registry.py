"""The actor registry: entry points found lazily, duplicates refused with both names, bad plugins named."""

from __future__ import annotations

import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

from edgeflow.registry import Registry, RegistryError

pytestmark = pytest.mark.timeout(30)


def make_dist(root: Path, dist: str, entries: dict[str, str], module: str | None = None, code: str = "") -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[edgeflow.actors]\n{lines}\n")
    if module:
        (root / f"{module}.py").write_text(code)


def registry_from(root: Path) -> Registry:
    eps = [ep for d in distributions(path=[str(root)]) for ep in d.entry_points if ep.group == "edgeflow.actors"]
    return Registry(eps)


def test_a_type_registered_by_two_packages_is_an_error_naming_both(tmp_path):
    make_dist(tmp_path, "vendor_a", {"sink.cloud": "vendor_a_mod:Cloud"})
    make_dist(tmp_path, "vendor_b", {"sink.cloud": "vendor_b_mod:Cloud"})
    reg = registry_from(tmp_path)
    assert reg.has("sink", "cloud")
    with pytest.raises(RegistryError) as err:
        reg.load("sink", "cloud")
    assert "vendor_a" in str(err.value)
    assert "vendor_b" in str(err.value)


def test_a_plugin_that_fails_to_import_is_named_with_the_reason(tmp_path, monkeypatch):
    make_dist(tmp_path, "broken_pkg", {"source.broken": "broken_mod:Broken"}, "broken_mod", "import not_a_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry_from(tmp_path)
    with pytest.raises(RegistryError, match=r"source type 'broken' \(broken_mod:Broken from 'broken_pkg'\) failed"):
        reg.load("source", "broken")


def test_a_plugin_class_of_the_wrong_kind_is_refused(tmp_path, monkeypatch):
    code = "from edgeflow import Sink\nclass NotASource(Sink):\n    pass\n"
    make_dist(tmp_path, "odd_pkg", {"source.odd": "odd_mod:NotASource"}, "odd_mod", code)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=r"is not a subclass of edgeflow\.Source"):
        registry_from(tmp_path).load("source", "odd")


def test_modules_load_only_when_their_type_is_used(tmp_path, monkeypatch):
    code = "from edgeflow import Sink\nclass Lazy(Sink):\n    pass\n"
    make_dist(tmp_path, "lazy_pkg", {"sink.lazy": "lazy_mod:Lazy"}, "lazy_mod", code)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry_from(tmp_path)
    assert reg.types("sink") == ["lazy"]
    assert "lazy_mod" not in sys.modules
    reg.load("sink", "lazy")
    assert "lazy_mod" in sys.modules


def test_running_the_demo_topology_imports_no_connector_it_does_not_use():
    import subprocess

    code = (
        "import sys; from edgeflow.topology import load_topology; load_topology('config/demo.toml'); "
        "print(sorted(m for m in ('paho', 'aiohttp', 'zmq', 'serial', 'edgeflow.mqtt', 'edgeflow.store') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"
