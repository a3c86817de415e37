"""Every Python file of the project compiles without a warning (an invalid escape sequence
in a non-raw string, an `is` with a literal, ...), compiled afresh under its own name: a
cached .pyc hides such warnings after the first run, and pyproject.toml ignores them in
sources parsed without a name (Hypothesis reading third-party modules)."""
from __future__ import annotations

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "build", "__pycache__", ".hypothesis", ".pytest_cache"}


def project_sources() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not SKIP.intersection(p.relative_to(ROOT).parts)]


def test_every_source_compiles_without_warnings() -> None:
    sources = project_sources()
    assert any(p.name == "readout.py" for p in sources)   # the listing found the tree
    warned: list[str] = []
    for path in sources:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile(path.read_bytes(), str(path.relative_to(ROOT)), "exec", dont_inherit=True)
        warned += [f"{w.filename}:{w.lineno}: {w.message}" for w in caught]
    assert warned == []
