"""The one import switch between the compiled hot path and its Python source.

``setup.py`` compiles the modules in :data:`COMPILED` with Cython, from the
same ``.py`` files, into extension modules beside them; Python's import
system prefers an extension to a source file of the same name. The source
stays the reference: the compiled modules behave the same, only faster.

This module runs first in ``metakit/__init__.py`` and decides, once per
process, before any of those modules is imported:

* ``METAKIT_NO_EXTENSIONS=1`` in the environment: every one of them is
  imported from its ``.py`` file (a finder ahead of the standard ones);
* otherwise a module whose ``.py`` or ``.pxd`` is not what its extension
  was built from (edited since the build: their SHA-256 differs from the
  one the build wrote into ``_compiled.txt``) is imported from its source
  too, with a warning, so a stale build never runs code that is not in the
  file you read.

:func:`compiled_modules` says which run compiled.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

__all__ = ["COMPILED", "NO_EXTENSIONS", "compiled_modules"]

#: The modules setup.py compiles (dotted, under ``metakit``).
COMPILED = ("framing",)

#: ``METAKIT_NO_EXTENSIONS`` is set (and not ``0``): the pure-Python code only.
NO_EXTENSIONS = os.environ.get("METAKIT_NO_EXTENSIONS", "") not in ("", "0")

_HERE = os.path.dirname(os.path.abspath(__file__))


def _paths(name: str) -> tuple[str, list[str]]:
    """A compiled module's source file, and the extension files beside it."""
    base = os.path.join(_HERE, *name.split("."))
    return base + ".py", [base + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES]


MANIFEST = "_compiled.txt"  # written by the build: "<module> <sha256>" lines


def source_digest(source: str) -> str | None:
    """The SHA-256 of a module's ``.py`` then its ``.pxd`` (if any), as the build
    records it; None when the ``.py`` cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as f:
            digest.update(f.read())
    except OSError:
        return None
    pxd = source[: -len(".py")] + ".pxd"
    if os.path.exists(pxd):
        with open(pxd, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _built_from() -> dict[str, str]:
    try:
        with open(os.path.join(_HERE, MANIFEST)) as f:
            return dict(line.split() for line in f if line.strip())
    except (OSError, ValueError):
        return {}


def _from_source() -> set[str]:
    """The full names of the modules to import from their ``.py`` files."""
    chosen = set()
    digests: dict[str, str] | None = None
    for name in COMPILED:
        source, extensions = _paths(name)
        if not any(os.path.exists(path) for path in extensions):
            continue  # not compiled: the standard import finds the source anyway
        if NO_EXTENSIONS:
            chosen.add(f"metakit.{name}")
            continue
        if digests is None:
            digests = _built_from()
        digest = source_digest(source)
        if digest is None:
            continue  # installed without its source: the extension is all there is
        if digests.get(name) != digest:
            warnings.warn(
                f"metakit.{name}: the source is not what its compiled extension was "
                "built from; using the source (pip install . compiles it again)",
                RuntimeWarning,
                stacklevel=3,
            )
            chosen.add(f"metakit.{name}")
    return chosen


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the chosen modules' ``.py`` files ahead of their extensions."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        source, _ = _paths(fullname.removeprefix("metakit."))
        return importlib.util.spec_from_file_location(fullname, source)


def compiled_modules() -> list[str]:
    """The metakit modules imported so far that run compiled (empty: pure Python)."""
    found = []
    for name in COMPILED:
        module = sys.modules.get(f"metakit.{name}")
        origin = getattr(module, "__file__", None) or ""
        if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            found.append(f"metakit.{name}")
    return found


_names = _from_source()
if _names:
    sys.meta_path.insert(0, _SourceFinder(_names))
