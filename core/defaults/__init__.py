"""The built-in default pipeline (``digits.toml`` here, the same as ``examples/digits.toml``), readable without
loading the rest of the package: ``ensemblecert default`` prints it without importing torch."""

from __future__ import annotations

from importlib import resources


def default_pipeline_text() -> str:
    """The built-in default pipeline as TOML text."""
    return resources.files(__name__).joinpath("digits.toml").read_text("utf-8")
