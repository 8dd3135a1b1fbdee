"""common_kernels.runtime.lazy: a package's names imported on first use."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``lazypkg`` whose ``__init__`` names ``heavy.VALUE`` lazily; ``heavy`` records
    its import in ``lazypkg.IMPORTED``."""
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text(
        "from common_kernels.runtime.lazy import lazy_names\n"
        "IMPORTED = []\n"
        "__getattr__, __dir__ = lazy_names(__name__, {'VALUE': 'lazypkg.heavy'})\n"
    )
    (root / "heavy.py").write_text("import lazypkg\nlazypkg.IMPORTED.append(1)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("lazypkg")
    for name in ("lazypkg", "lazypkg.heavy"):
        sys.modules.pop(name, None)


def test_a_name_is_imported_on_first_use_once(package) -> None:
    assert package.IMPORTED == [] and "lazypkg.heavy" not in sys.modules
    assert "VALUE" in dir(package)
    assert package.VALUE == 42
    from lazypkg import VALUE

    assert VALUE == 42 and package.IMPORTED == [1]
    assert vars(package)["VALUE"] == 42  # kept: later reads are plain attribute reads


def test_an_unknown_name_is_an_attribute_error_naming_the_package(package) -> None:
    with pytest.raises(AttributeError, match="module 'lazypkg' has no attribute 'nope'"):
        _ = package.nope
    assert package.IMPORTED == []
