"""The few libbpf calls bcc 0.26 does not wrap, through cffi (ABI mode on libbpf.so.1).

bcc 0.26 has no Python test-run wrapper, and libbpf 1.x dropped the old
`bpf_prog_test_run` symbol, so the `_opts` form is declared here, with the struct
layout of libbpf 1.1 (`sz` first: libbpf checks it for compatibility).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import cffi

_CDEF = """
struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    uint32_t data_size_in;
    uint32_t data_size_out;
    const void *ctx_in;
    void *ctx_out;
    uint32_t ctx_size_in;
    uint32_t ctx_size_out;
    uint32_t retval;
    int repeat;
    uint32_t duration;
    uint32_t flags;
    uint32_t cpu;
    uint32_t batch_size;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

struct bpf_map_info {
    uint32_t type;
    uint32_t id;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t map_flags;
    char name[16];
    uint32_t ifindex;
    uint32_t btf_vmlinux_value_type_id;
    uint64_t netns_dev;
    uint64_t netns_ino;
    uint32_t btf_id;
    uint32_t btf_key_type_id;
    uint32_t btf_value_type_id;
    uint32_t pad;
    uint64_t map_extra;
};
struct bpf_prog_info_head {
    uint32_t type;
    uint32_t id;
    uint8_t tag[8];
};
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
int bpf_obj_get(const char *pathname);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_prog_get_fd_by_id(uint32_t id);
"""

ffi = cffi.FFI()
ffi.cdef(_CDEF)


@lru_cache(maxsize=1)
def lib():
    return ffi.dlopen("libbpf.so.1")


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = ffi.new("struct bpf_map_info *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info"))
    if lib().bpf_obj_get_info_by_fd(fd, info, size) != 0:
        raise OSError(ffi.errno, f"bpf_obj_get_info_by_fd({fd}): {os.strerror(ffi.errno)}")
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   ffi.string(info.name).decode())


def prog_id(fd: int) -> int:
    info = ffi.new("struct bpf_prog_info_head *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info_head"))
    if lib().bpf_obj_get_info_by_fd(fd, info, size) != 0:
        raise OSError(ffi.errno, f"bpf_obj_get_info_by_fd({fd}): {os.strerror(ffi.errno)}")
    return info.id
