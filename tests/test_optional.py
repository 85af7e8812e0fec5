"""Optional dependencies: a missing one raises an ImportError naming what needs it and the extra."""

from __future__ import annotations

import sys

import pytest

from nashmoe._optional import pyplot, require


def test_require_returns_the_module() -> None:
    import json

    assert require("json", extra="train", purpose="x") is json


@pytest.mark.parametrize(
    ("module", "package", "named"),
    [("safetensors.torch", None, "safetensors"), ("PIL.Image", "Pillow", "Pillow")],
)
def test_missing_module_names_package_and_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str | None, named: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(
        ImportError, match=rf"^decoding needs {named}: pip install 'nashmoe\[vision\]'"
    ):
        require(module, extra="vision", purpose="decoding", package=package)


def test_pyplot_is_agg_and_missing_matplotlib_names_the_plot_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("matplotlib")
    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"nashmoe\[plot\]"):
        pyplot("the fairness plot")
