"""Assemble the XDP program's source for bcc.

bcc rewrites map method calls (`services.lookup(&k)`) only in its main file, not in
headers it #includes. The program is split by concern into headers under bpf/, so
this module inlines every local `#include "..."` (once each, recursively) and hands
bcc a single translation unit. System includes (`<...>`) are left to bcc.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


def _sources_root() -> Path:
    """Where bpf/ and csrc/ are: beside the package in a checkout (and an editable
    install), else where an installation put them (pyproject.toml's data-files:
    <prefix>/share/svcxdp, the prefix the package was installed under, or the running
    interpreter's)."""
    here = Path(__file__).resolve()
    # <prefix>/lib/pythonX.Y/site-packages/controlplane/dataplane/source.py
    installed = [here.parents[5] / "share" / "svcxdp"] if len(here.parents) > 5 else []
    candidates = [here.parents[2], *installed, Path(sys.prefix) / "share" / "svcxdp"]
    for root in candidates:
        if (root / "bpf" / "svcxdp.c").is_file():
            return root
    raise FileNotFoundError(f"the XDP program's sources (bpf/svcxdp.c) are in none of "
                            f"{', '.join(map(str, candidates))}: svcxdp is not installed whole")


SOURCES_ROOT = _sources_root()   # a checkout, or <prefix>/share/svcxdp
BPF_DIR = SOURCES_ROOT / "bpf"
CSRC_DIR = SOURCES_ROOT / "csrc"
MAIN_SOURCE = BPF_DIR / "svcxdp.c"
SHARED_HEADER = BPF_DIR / "svcxdp.h"

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _resolve(name: str, including_dir: Path, search: tuple[Path, ...]) -> Path:
    for base in (including_dir, *search):
        candidate = (base / name).resolve()
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"#include \"{name}\" not found from {including_dir}")


def inline_local_includes(path: Path, search: tuple[Path, ...] = (BPF_DIR, CSRC_DIR),
                          _seen: set[Path] | None = None) -> str:
    """Return the text of `path` with each local include replaced by its text."""
    seen = _seen if _seen is not None else set()
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    out: list[str] = []
    for line in path.read_text().splitlines():
        m = _LOCAL_INCLUDE.match(line)
        if m:
            target = _resolve(m.group(1), path.parent, search)
            out.append(f"/* ---- {target.name} ---- */")
            out.append(inline_local_includes(target, search, seen))
            out.append(f"/* ---- end {target.name} ---- */")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def program_text() -> str:
    return inline_local_includes(MAIN_SOURCE)
