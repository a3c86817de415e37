"""Reading `-f FILE|DIR|-` inputs into manifest documents (all read before anything runs)."""
from __future__ import annotations

import sys
from pathlib import Path

from controlplane.api.manifest import Document, ManifestError, load_documents

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class InputError(ValueError):
    pass


def _files_in(directory: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in directory.glob(pattern) if p.is_file() and p.suffix in MANIFEST_SUFFIXES)


def read_documents(paths: list[str], recursive: bool = False) -> list[Document]:
    """Every document of every input, in order. InputError for missing paths, ManifestError
    for unparsable YAML; nothing is returned partially."""
    if not paths:
        raise InputError("must specify one of -f and -k")
    docs: list[Document] = []
    for raw in paths:
        if raw == "-":
            docs.extend(load_documents(sys.stdin.read(), "STDIN"))
            continue
        if raw.startswith(("http://", "https://")):
            raise InputError(f"reading manifests from URLs is not supported: {raw}")
        path = Path(raw)
        if not path.exists():
            raise InputError(f'the path "{raw}" does not exist')
        files = _files_in(path, recursive) if path.is_dir() else [path]
        for file in files:
            try:
                text = file.read_text()
            except OSError as exc:
                raise InputError(f'the path "{file}" cannot be read: {exc.strerror}') from None
            docs.extend(load_documents(text, str(file)))
    if not docs:
        raise InputError("no objects passed to apply")
    return docs


__all__ = ["read_documents", "InputError", "ManifestError", "Document"]
