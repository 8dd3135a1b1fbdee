"""One behaviour for files: only ``common_kernels.runtime.files`` writes files atomically and
parses sizes.

A source scan of every method package (no imports, so the ``repo`` session needs nothing but
pytest): writing through a temporary file, renaming files into place and splitting ``HxW`` size
strings are left to ``common_kernels.runtime.files`` (``atomic_write``, ``atomic_directory``,
``write_bytes``/``write_text``/``write_json``, ``parse_size``), so permissions, temporary names,
cleanup and the size rule stay the same in every package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD_SOURCES = sorted(
    path
    for path in (ROOT / "packages").glob("*/src/**/*.py")
    if path.relative_to(ROOT / "packages").parts[0] != "common-kernels"
)
FORBIDDEN = {
    "a temporary file for an output (use common_kernels.runtime.files.atomic_write)": re.compile(
        r"\b(mkstemp|NamedTemporaryFile|mktemp)\b"
    ),
    "a file renamed into place (use runtime.files.atomic_write / atomic_directory)": (
        re.compile(r"\bos\.(replace|rename|renames)\(|\.rename\(|\.replace\(\s*\w*(tmp|temp)")
    ),
    "an own atomic writer (use common_kernels.runtime.files)": re.compile(
        r"^\s*def \w*atomic\w*\(", re.M
    ),
    "an own size parser (use common_kernels.runtime.files.parse_size)": re.compile(
        r"""\.(split|partition)\(\s*["'][xX]["']"""
    ),
}


def test_method_package_sources_are_found() -> None:
    packages = {path.relative_to(ROOT / "packages").parts[0] for path in METHOD_SOURCES}
    assert {"semanir", "itaclip", "pixelsmith", "diffeat", "vitron"} <= packages


@pytest.mark.parametrize("rule", sorted(FORBIDDEN))
def test_no_method_package_writes_or_parses_sizes_on_its_own(rule: str) -> None:
    pattern = FORBIDDEN[rule]
    found = [
        f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1}: {match.group(0)!r}"
        for path in METHOD_SOURCES
        for text in [path.read_text(encoding="utf-8")]
        for match in pattern.finditer(text)
    ]
    assert not found, f"{rule}:\n" + "\n".join(found)


def test_the_scan_catches_what_it_forbids() -> None:
    samples = {
        "fd, tmp = tempfile.mkstemp(dir=folder)": "a temporary file",
        "os.replace(tmp, path)": "a file renamed into place",
        "tmp.rename(path)": "a file renamed into place",
        "def atomic_write_bytes(path, data):": "an own atomic writer",
        'height, width = text.lower().split("x")': "an own size parser",
    }
    for sample, rule in samples.items():
        matched = [name for name, pattern in FORBIDDEN.items() if pattern.search(sample)]
        assert len(matched) == 1 and matched[0].startswith(rule), (sample, matched)
