"""Compile and load the dataplane in a short-lived child process, then own it by its pins.

bcc links LLVM into the process that compiles: `import bcc` alone costs ~64 MiB of
RSS, compiling the program another ~75 MiB, and bcc keeps the module for the life of
its BPF object. The agent needs none of it once the programs are loaded: maps and
programs are pinned, and everything the agent does with them goes through their
fds (libbpf.py, pinned.WritableTable). So `ensure_built` runs
`python -m controlplane.dataplane.build` — which compiles the one source with bcc
(Dataplane.load: pinned maps reused, never flushed), pins both entry points and
writes a stamp — and the process that asked never imports bcc.

The stamp (a one-entry map pinned as `build_stamp` beside the others: bpffs holds
BPF objects only) is a SHA-256 of everything the build
depends on: the program text (bpf/ and csrc/, inlined), the compile flags (map sizes,
timeouts, forwarding mode, pin directory), the kernel release (bcc compiles against
its headers) and the bcc installation. An agent restarted with an unchanged build
finds the stamp, the maps and the programs pinned, and loads nothing (milliseconds
instead of seconds of compiling); anything changed or missing means a rebuild.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from .config import PROGRAM_PINS, STAMP_PIN, DataplaneConfig
from .program import DataplaneError, StaleDataplane, warn_replaced
from .source import program_text

# The child's line that says what its load replaced (Dataplane.replaced), as JSON.
REPLACED = "svcxdp-replaced: "
STALE_EXIT = 3   # the child's exit status when it refused maps of another layout


class BuildError(DataplaneError):
    pass


def build_stamp(config: DataplaneConfig) -> bytes:
    h = hashlib.sha256()
    h.update(program_text().encode())
    h.update("\0".join(config.cflags()).encode())
    h.update(os.uname().release.encode())
    spec = importlib.util.find_spec("bcc")
    if spec is not None and spec.origin:
        st = os.stat(spec.origin)
        h.update(f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.digest()


def read_stamp(pin_dir: Path) -> bytes | None:
    from .libbpf import ffi, lib
    fd = lib().bpf_obj_get(str(pin_dir / STAMP_PIN).encode())
    if fd < 0:
        return None
    try:
        key = ffi.new("uint32_t *", 0)
        value = ffi.new("uint8_t[32]")
        if lib().bpf_map_lookup_elem(fd, key, value) != 0:
            return None
        return bytes(ffi.buffer(value))
    finally:
        os.close(fd)


def write_stamp(pin_dir: Path, digest: bytes) -> None:
    from .libbpf import _check, ffi, lib, obj_pin
    opts = ffi.new("struct bpf_map_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_create_opts")
    fd = _check(lib().bpf_map_create(2, b"svcxdp_stamp", 4, len(digest), 1, opts),   # an ARRAY map
                "bpf_map_create(build stamp)")
    try:
        _check(lib().bpf_map_update_elem(fd, ffi.new("uint32_t *", 0), ffi.from_buffer(digest), 0),
               "writing the build stamp")
        (pin_dir / STAMP_PIN).unlink(missing_ok=True)
        obj_pin(fd, str(pin_dir / STAMP_PIN))
    finally:
        os.close(fd)


def _config_json(config: DataplaneConfig) -> str:
    d = dataclasses.asdict(config)
    d["pin_root"] = str(config.pin_root)
    return json.dumps(d)


def _config_from_json(text: str) -> DataplaneConfig:
    d = json.loads(text)
    d["pin_root"] = Path(d["pin_root"])
    return DataplaneConfig(**d)


def is_current(config: DataplaneConfig, map_names: tuple[str, ...]) -> bool:
    """The pins hold a build of exactly this source and configuration."""
    pin_dir = config.pin_dir
    names = (*map_names, *PROGRAM_PINS.values())
    return read_stamp(pin_dir) == build_stamp(config) and all((pin_dir / n).exists() for n in names)


def ensure_built(config: DataplaneConfig, map_names: tuple[str, ...]) -> tuple[str, ...] | None:
    """Build in a child process unless the pins are current. None if it did not build;
    else what it replaced (Dataplane.replaced: empty unless the pins were another
    layout's)."""
    if not config.pin:
        raise BuildError("a dataplane built in a child process must be pinned (config.pin)")
    if is_current(config, map_names):
        return None
    r = subprocess.run([sys.executable, "-m", "controlplane.dataplane.build", _config_json(config)],
                       capture_output=True, text=True)
    if r.returncode == STALE_EXIT:   # --stale-dataplane refuse: the refusal as the child said it
        raise DataplaneError(r.stderr.strip())
    if r.returncode != 0:
        raise BuildError(f"building the XDP program failed: {(r.stderr or r.stdout).strip()[-4000:]}")
    said = [line[len(REPLACED):] for line in r.stdout.splitlines() if line.startswith(REPLACED)]
    try:
        replaced = tuple(json.loads(said[-1]))
    except (IndexError, ValueError):
        raise BuildError(f"the build did not say what it replaced: {r.stdout.strip()[-400:]!r}") from None
    if replaced:   # the child's load() said it to a log no one reads
        warn_replaced(config.instance, replaced)
    return replaced


def _build(config: DataplaneConfig) -> None:
    from .libbpf import obj_pin
    from .program import PROGRAM_FDS, Dataplane
    pin_dir = config.pin_dir
    (pin_dir / STAMP_PIN).unlink(missing_ok=True)   # a half-done build is never current
    dp = Dataplane.load(config)
    try:
        for role, field_name in PROGRAM_FDS.items():
            path = pin_dir / PROGRAM_PINS[role]
            path.unlink(missing_ok=True)
            obj_pin(getattr(dp, field_name), str(path))
        write_stamp(pin_dir, build_stamp(config))
        print(REPLACED + json.dumps(list(dp.replaced)))   # for ensure_built to say
    finally:
        dp.close()


if __name__ == "__main__":
    try:
        _build(_config_from_json(sys.argv[1]))
    except StaleDataplane as exc:   # the parent reports it
        print(exc, file=sys.stderr)
        sys.exit(STALE_EXIT)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
