"""Build the compiled hot path (Cython) beside the pure-Python package.

Everything else about the package is in pyproject.toml. The modules listed
in ``metakit/_extensions.py`` (``COMPILED``: the framers, for now) are
compiled from their own ``.py`` files, with a ``.pxd`` beside them that
makes their classes extension types; the source stays the reference and
``METAKIT_NO_EXTENSIONS=1`` imports it instead. Without a C compiler (or
with ``METAKIT_NO_EXTENSIONS=1`` at install time) the build says so and
installs the pure-Python package.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
PACKAGE = HERE / "metakit"
MANIFEST = "_compiled.txt"  # "<module> <sha256 of its .py then its .pxd>" lines


def compiled_names() -> tuple[str, ...]:
    """``COMPILED`` from metakit/_extensions.py, read without importing metakit."""
    tree = ast.parse((PACKAGE / "_extensions.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("metakit/_extensions.py has no COMPILED")


def say(text: str) -> None:
    print(f"metakit: {text}", file=sys.stderr)


def extensions() -> list[Extension]:
    if os.environ.get("METAKIT_NO_EXTENSIONS", "") not in ("", "0"):
        say("METAKIT_NO_EXTENSIONS is set: installing the pure-Python package")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        say("Cython is not installed: installing the pure-Python package")
        return []
    modules = [
        Extension(f"metakit.{name}", [f"metakit/{name.replace('.', '/')}.py"])
        for name in compiled_names()
    ]
    try:
        return cythonize(
            modules,
            compiler_directives={
                "language_level": 3,
                # Annotations stay Python's: no C types, no exact-type checks on arguments.
                "annotation_typing": False,
                # Methods stay method descriptors, which check the type of self
                # (a binding function would read another object's C fields).
                "binding": False,
            },
            quiet=True,
            force=True,  # the directives above change the C too: never reuse an old one
        )
    except Exception as exc:  # a Cython that cannot translate them: keep the source
        say(f"Cython could not translate the hot path ({exc}): installing the pure-Python package")
        return []


class OptionalBuildExt(build_ext):
    """Build what compiles; without a compiler, say so and leave the source."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            say(f"could not compile the extensions ({exc}): installing the pure-Python package")
            return
        self.write_manifest()

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            say(f"could not compile {ext.name} ({exc}): it runs from its source")
            self.failed.append(ext.name)

    def initialize_options(self) -> None:
        super().initialize_options()
        self.failed: list[str] = []

    def write_manifest(self) -> None:
        # What each extension was built from: the import switch runs the source
        # of a module whose .py has changed since (metakit/_extensions.py).
        lines = []
        for ext in self.extensions:
            if ext.name in self.failed:
                continue
            name = ext.name.removeprefix("metakit.")
            base = PACKAGE / name.replace(".", "/")  # (ext.sources: the .c now)
            # As metakit._extensions.source_digest reads it (not imported here).
            sha = hashlib.sha256()
            for source in (base.with_suffix(".py"), base.with_suffix(".pxd")):
                if source.exists():
                    sha.update(source.read_bytes())
            lines.append(f"{name} {sha.hexdigest()}\n")
        target = Path(self.get_ext_fullpath("metakit._x")).parent / MANIFEST
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(lines))
        built = len(self.extensions) - len(self.failed)
        say(f"compiled {built} of {len(self.extensions)} hot-path modules")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
