"""The public surface: curated, documented, and free of aiohttp at import."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import metakit

CORE_MODULES = [
    "connection",
    "connections",
    "errors",
    "ids",
    "info",
    "messages",
    "meta",
    "node",
    "pool",
    "process",
    "supervisor",
]


def test_top_level_all_is_the_union_of_core_modules() -> None:
    union = {"__version__", "compiled_modules", "loop_factory", "run"}
    for name in CORE_MODULES:
        union |= set(importlib.import_module(f"metakit.{name}").__all__)
    assert set(metakit.__all__) == union
    assert metakit.__all__ == sorted(metakit.__all__, key=lambda n: (n.upper() != n, n))


@pytest.mark.parametrize("name", sorted(set(metakit.__all__) - {"__version__", "NO_REPLY"}))
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(metakit, name)
    assert inspect.getdoc(obj), f"metakit.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_") or (not callable(value) and not isinstance(value, property)):
                continue
            assert inspect.getdoc(value), f"metakit.{name}.{attr} has no docstring"


def test_importing_metakit_does_not_import_aiohttp() -> None:
    code = "import sys, metakit; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("metakit").joinpath("py.typed").is_file()


SUBPACKAGES = [
    "metakit.framing",
    "metakit.observer",
    "metakit.port",
    "metakit.ssh",
    "metakit.tcp",
    "metakit.udp",
    "metakit.web",
    "metakit.websocket",
]


@pytest.mark.parametrize("module_name", SUBPACKAGES)
def test_subpackages_export_documented_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__ == sorted(module.__all__, key=lambda n: (n.upper() != n, n))
    for name in module.__all__:
        obj = getattr(module, name)
        assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                public = not attr.startswith("_")
                if public and (callable(value) or isinstance(value, property)):
                    assert inspect.getdoc(value), f"{module_name}.{name}.{attr} has no docstring"


@pytest.mark.parametrize(
    "module_name", ["metakit.tcp", "metakit.udp", "metakit.web", "metakit.websocket"]
)
def test_network_metas_offer_statistics_snapshots(module_name: str) -> None:
    module = importlib.import_module(module_name)
    metas = [getattr(module, n) for n in module.__all__]
    metas = [m for m in metas if inspect.isclass(m) and issubclass(m, metakit.Meta)]
    assert metas
    for meta in metas:
        assert callable(getattr(meta, "statistics", None)), f"{meta.__name__}.statistics"


@pytest.mark.parametrize(
    "module_name", ["metakit.tcp", "metakit.udp", "metakit.web", "metakit.websocket"]
)
def test_statistics_are_frozen_dataclasses_with_every_field_documented(module_name: str) -> None:
    import dataclasses
    import typing

    module = importlib.import_module(module_name)
    metas = [getattr(module, n) for n in module.__all__]
    metas = [m for m in metas if inspect.isclass(m) and issubclass(m, metakit.Meta)]
    for meta in metas:
        stats = typing.get_type_hints(meta.statistics)["return"]
        assert dataclasses.is_dataclass(stats), f"{meta.__name__}.statistics -> {stats}"
        assert stats.__dataclass_params__.frozen, stats  # type: ignore[attr-defined]
        doc = inspect.getdoc(stats) or ""
        assert "Attributes:" in doc, stats
        listed = doc.split("Attributes:", 1)[1]
        for field in dataclasses.fields(stats):
            assert f"{field.name}:" in listed, f"{stats.__name__}.{field.name} is not documented"
