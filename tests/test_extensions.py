"""The import switch between the compiled hot path and its source
(metakit/_extensions.py): METAKIT_NO_EXTENSIONS, and a stale build."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import metakit
from metakit import _extensions

PACKAGE = Path(metakit.__file__).parent
BUILT = [
    name
    for name in _extensions.COMPILED
    if any(
        (PACKAGE / (name.replace(".", "/") + suffix)).exists()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )
]
needs_build = pytest.mark.skipif(not BUILT, reason="the hot path is not compiled here")

PROBE = """
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import metakit, metakit.tcp, metakit.udp, metakit.websocket
    import metakit.framing
print(json.dumps({
    "compiled": metakit.compiled_modules(),
    "framing": metakit.framing.__file__,
    "warnings": [str(w.message) for w in caught],
}))
"""


def probe(env: dict[str, str], path: Path | None = None) -> dict[str, object]:
    """Import metakit in a fresh interpreter; what it ran compiled, and what it warned."""
    full = {**os.environ, **env}
    flags = []
    if path is not None:
        # -S: no site hooks, so an editable install's finder cannot pick the
        # installed tree; the dependencies' directories are given by hand.
        full["PYTHONPATH"] = os.pathsep.join([str(path), *site.getsitepackages()])
        flags.append("-S")
    out = subprocess.run(
        [sys.executable, *flags, "-c", PROBE],
        env=full,
        cwd=path,  # -c puts the working directory first on sys.path
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_no_extensions_imports_every_module_from_its_source() -> None:
    got = probe({"METAKIT_NO_EXTENSIONS": "1"})
    assert got["compiled"] == []
    assert str(got["framing"]).endswith("framing.py")
    assert got["warnings"] == []


@needs_build
def test_a_build_runs_compiled() -> None:
    got = probe({"METAKIT_NO_EXTENSIONS": ""})
    assert got["compiled"] == [f"metakit.{name}" for name in BUILT]
    assert got["warnings"] == []


@needs_build
def test_a_module_edited_since_the_build_runs_from_its_source(tmp_path: Path) -> None:
    """A copy of the built package with one source edited: that module comes
    from its .py, with a warning; the others stay compiled."""
    shutil.copytree(PACKAGE, tmp_path / "metakit", ignore=shutil.ignore_patterns("__pycache__"))
    edited = tmp_path / "metakit" / "framing.py"
    edited.write_text(edited.read_text() + "\n# edited after the build\n")
    got = probe({"METAKIT_NO_EXTENSIONS": ""}, tmp_path)
    assert str(got["framing"]) == str(edited)
    assert "metakit.framing" not in got["compiled"]  # type: ignore[operator]
    assert len(got["compiled"]) == len(BUILT) - 1  # type: ignore[arg-type]
    assert any("metakit.framing" in w for w in got["warnings"])  # type: ignore[attr-defined]


@needs_build
def test_a_pxd_edited_since_the_build_runs_the_source(tmp_path: Path) -> None:
    """The .pxd shapes the compiled types: an edit to it makes the build stale too."""
    shutil.copytree(PACKAGE, tmp_path / "metakit", ignore=shutil.ignore_patterns("__pycache__"))
    pxd = tmp_path / "metakit" / "framing.pxd"
    pxd.write_text(pxd.read_text() + "\n# edited after the build\n")
    got = probe({"METAKIT_NO_EXTENSIONS": ""}, tmp_path)
    assert str(got["framing"]) == str(tmp_path / "metakit" / "framing.py")
    assert any("metakit.framing" in w for w in got["warnings"])  # type: ignore[attr-defined]


@needs_build
def test_a_build_without_its_source_runs_compiled(tmp_path: Path) -> None:
    """Installed without the .py (some packagers strip it): the extension is all there is."""
    shutil.copytree(PACKAGE, tmp_path / "metakit", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "metakit" / "framing.py").unlink()
    got = probe({"METAKIT_NO_EXTENSIONS": ""}, tmp_path)
    assert "metakit.framing" in got["compiled"]  # type: ignore[operator]
    assert got["warnings"] == []
