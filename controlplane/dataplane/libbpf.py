"""The few libbpf calls bcc 0.26 does not wrap, through cffi (ABI mode on libbpf.so.1).

Besides test-run and object info: creating maps (Maglev inner tables are made
from user space, not by bcc) and batch/element access to maps bcc never opened.

bcc 0.26 has no Python test-run wrapper, and libbpf 1.x dropped the old
`bpf_prog_test_run` symbol, so the `_opts` form is declared here, with the struct
layout of libbpf 1.1 (`sz` first: libbpf checks it for compatibility).
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
from array import array
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

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
struct bpf_prog_info_head {   /* struct bpf_prog_info up to its name */
    uint32_t type;
    uint32_t id;
    uint8_t tag[8];
    uint32_t jited_prog_len;
    uint32_t xlated_prog_len;
    uint64_t jited_prog_insns;
    uint64_t xlated_prog_insns;
    uint64_t load_time;
    uint32_t created_by_uid;
    uint32_t nr_map_ids;
    uint64_t map_ids;
    char name[16];
};
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
int bpf_obj_get(const char *pathname);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_prog_get_fd_by_id(uint32_t id);

struct bpf_map_create_opts {
    size_t sz;
    uint32_t btf_fd;
    uint32_t btf_key_type_id;
    uint32_t btf_value_type_id;
    uint32_t btf_vmlinux_value_type_id;
    uint32_t inner_map_fd;
    uint32_t map_flags;
    uint64_t map_extra;
    uint32_t numa_node;
    uint32_t map_ifindex;
};
int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size,
                   uint32_t max_entries, const struct bpf_map_create_opts *opts);
struct bpf_map_batch_opts {
    size_t sz;
    uint64_t elem_flags;
    uint64_t flags;
};
int bpf_map_update_batch(int fd, const void *keys, const void *values, uint32_t *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         uint32_t *count, const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, uint32_t *count, const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_fd_by_id(uint32_t id);

struct bpf_prog_attach_opts {
    size_t sz;
    uint32_t flags;
    int replace_prog_fd;
};
int bpf_prog_attach_opts(int prog_fd, int attachable_fd, int type,
                         const struct bpf_prog_attach_opts *opts);
int bpf_prog_detach2(int prog_fd, int attachable_fd, int type);
int bpf_prog_query(int target_fd, int type, uint32_t query_flags, uint32_t *attach_flags,
                   uint32_t *prog_ids, uint32_t *prog_cnt);
struct bpf_btf_info {
    uint64_t btf;
    uint32_t btf_size;
    uint32_t id;
    uint64_t name;
    uint32_t name_len;
    uint32_t kernel_btf;
};
int bpf_btf_get_fd_by_id(uint32_t id);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
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
    flags: int = 0   # map_flags (BPF_F_*)


def map_info(fd: int) -> MapInfo:
    info = ffi.new("struct bpf_map_info *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info"))
    if lib().bpf_obj_get_info_by_fd(fd, info, size) != 0:
        raise OSError(ffi.errno, f"bpf_obj_get_info_by_fd({fd}): {os.strerror(ffi.errno)}")
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   ffi.string(info.name).decode(), info.map_flags)


def prog_id(fd: int) -> int:
    info = ffi.new("struct bpf_prog_info_head *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info_head"))
    if lib().bpf_obj_get_info_by_fd(fd, info, size) != 0:
        raise OSError(ffi.errno, f"bpf_obj_get_info_by_fd({fd}): {os.strerror(ffi.errno)}")
    return info.id


def prog_name(fd: int) -> str:
    """The program's name (its function's, 15 characters at most)."""
    info = ffi.new("struct bpf_prog_info_head *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info_head"))
    if lib().bpf_obj_get_info_by_fd(fd, info, size) != 0:
        raise OSError(ffi.errno, f"bpf_obj_get_info_by_fd({fd}): {os.strerror(ffi.errno)}")
    return ffi.string(info.name).decode(errors="replace")


def prog_fd_by_id(prog_id_: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id_), f"bpf_prog_get_fd_by_id({prog_id_})")


# map types (linux/bpf.h enum bpf_map_type) the project names
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
PERCPU_MAP_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH})
MAP_IN_MAP_TYPES = frozenset({BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS})
BPF_F_MMAPABLE = 1 << 10   # an array map whose values user space can mmap (mapped.py)


def _check(rc: int, what: str) -> int:
    """libbpf 1.x returns -errno (and sets errno)."""
    if rc < 0:
        err = -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def u32_array_map_create(name: str, entries: int, flags: int = 0) -> int:
    """A new ARRAY map of u32 -> u32; returns its fd (the caller closes it)."""
    opts = ffi.new("struct bpf_map_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_create_opts")
    opts.map_flags = flags
    return _check(lib().bpf_map_create(BPF_MAP_TYPE_ARRAY, name.encode(), 4, 4, entries, opts),
                  f"bpf_map_create({name}, {entries} entries)")


def u32_array_write(fd: int, values) -> None:
    """values[i] -> key i for every i, in one batch (values: array('I') or bytes-like)."""
    n = len(values)
    if n == 0:
        return
    key_buf = array("I", range(n))
    keys = ffi.from_buffer("uint32_t[]", key_buf)
    vals = ffi.from_buffer("uint32_t[]", values)
    count = ffi.new("uint32_t *", n)
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    _check(lib().bpf_map_update_batch(fd, keys, vals, count, opts), "bpf_map_update_batch")


def u32_update(fd: int, key: int, value: int) -> None:
    """One u32 -> u32 entry (a DEVMAP's ifindex -> ifindex among them)."""
    _check(lib().bpf_map_update_elem(fd, ffi.new("uint32_t *", key), ffi.new("uint32_t *", value), 0),
           f"bpf_map_update_elem(key {key})")


def u64_update(fd: int, key: int, value: int) -> None:
    """One u32 -> u64 entry."""
    _check(lib().bpf_map_update_elem(fd, ffi.new("uint32_t *", key), ffi.new("uint64_t *", value), 0),
           f"bpf_map_update_elem(key {key})")


def u64_lookup(fd: int, key: int) -> int | None:
    """The u64 at a u32 key, or None if there is none."""
    value = ffi.new("uint64_t *")
    rc = lib().bpf_map_lookup_elem(fd, ffi.new("uint32_t *", key), value)
    if rc == -errno.ENOENT:
        return None
    _check(rc, f"bpf_map_lookup_elem(key {key})")
    return int(value[0])


def u32_delete(fd: int, key: int) -> bool:
    """Remove a u32-keyed entry; False if it was not there."""
    rc = lib().bpf_map_delete_elem(fd, ffi.new("uint32_t *", key))
    if rc == -errno.ENOENT:
        return False
    _check(rc, f"bpf_map_delete_elem(key {key})")
    return True


def u32_array_read(fd: int, entries: int) -> list[int]:
    """Every value of a u32 ARRAY map, in key order."""
    out = ffi.new("uint32_t[]", entries)
    val = ffi.new("uint32_t *")
    key = ffi.new("uint32_t *")
    for i in range(entries):
        key[0] = i
        _check(lib().bpf_map_lookup_elem(fd, key, val), "bpf_map_lookup_elem")
        out[i] = val[0]
    return list(out)


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"bpf_map_get_fd_by_id({map_id})")


BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0,
                replace_fd: int = 0) -> None:
    """bpf_prog_attach with flags (BPF_F_ALLOW_MULTI, BPF_F_REPLACE + replace_fd)."""
    opts = ffi.new("struct bpf_prog_attach_opts *")
    opts.sz = ffi.sizeof("struct bpf_prog_attach_opts")
    opts.flags = flags
    opts.replace_prog_fd = replace_fd
    _check(lib().bpf_prog_attach_opts(prog_fd, target_fd, attach_type, opts),
           f"bpf_prog_attach(type {attach_type})")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _check(lib().bpf_prog_detach2(prog_fd, target_fd, attach_type),
           f"bpf_prog_detach(type {attach_type})")


def prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached to target_fd (a cgroup) for attach_type."""
    ids = ffi.new("uint32_t[]", max_progs)
    cnt = ffi.new("uint32_t *", max_progs)
    flags = ffi.new("uint32_t *")
    _check(lib().bpf_prog_query(target_fd, attach_type, 0, flags, ids, cnt),
           f"bpf_prog_query(type {attach_type})")
    return [ids[i] for i in range(cnt[0])]


def obj_get(pin: str) -> int:
    return _check(lib().bpf_obj_get(pin.encode()), f"bpf_obj_get({pin})")


def obj_pin(fd: int, pin: str) -> None:
    _check(lib().bpf_obj_pin(fd, pin.encode()), f"bpf_obj_pin({pin})")


class BatchCursor:
    """Where a BPF_MAP_LOOKUP_BATCH walk of a hash map stopped (the kernel's bucket token),
    so a later walk resumes there (ctgc.py walks the conntrack tables a slice at a time).
    `started` False: the next walk begins at the first bucket."""

    def __init__(self) -> None:
        self.token = ffi.new("uint8_t[8]")
        self.started = False


def _lookup_batch_counts(fd: int, keys, values, batch: int, limit: int | None, what: str,
                         cursor: BatchCursor | None = None) -> Iterator[int]:
    """The BPF_MAP_LOOKUP_BATCH loop every reader shares: fills `keys` and `values` (cffi
    pointers to room for `batch` entries) chunk by chunk and yields each chunk's count, at
    most `limit` entries in all. With `cursor`, the walk starts where it says and leaves
    it where it stopped (at the first bucket again once the walk reached the end)."""
    left = limit
    cursor = cursor or BatchCursor()
    token_in = cursor.token
    token_out = ffi.new("uint8_t[8]")
    count = ffi.new("uint32_t *")
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    first = not cursor.started
    while left is None or left > 0:
        count[0] = batch if left is None else min(batch, left)
        rc = lib().bpf_map_lookup_batch(fd, ffi.NULL if first else token_in, token_out, keys, values, count, opts)
        err = -rc if rc < 0 else 0
        if err not in (0, errno.ENOENT):
            raise OSError(err, f"bpf_map_lookup_batch({what}): {errno.errorcode.get(err, err)}")
        # The cursor moves before the chunk is handed out: a caller that stops after it
        # resumes with the next one.
        if err == errno.ENOENT:
            cursor.started = False
        else:
            ffi.memmove(token_in, token_out, 8)
            cursor.started = True
            first = False
        if count[0]:
            if left is not None:
                left -= count[0]
            yield count[0]
        if err == errno.ENOENT:
            return


def lookup_batches(table, batch: int = 8192) -> Iterator[tuple[ct.Array, ct.Array, int]]:
    """(keys, values, count) chunks of a hash map, read with BPF_MAP_LOOKUP_BATCH into
    arrays of the table's ctypes Key and Leaf (reused: a chunk is valid until the next).
    A table that is no hash map gives its entries in the same shape through a
    `lookup_batches` of its own (flowsets.FlowSets: the pods' sets)."""
    own = getattr(table, "lookup_batches", None)
    if own is not None:
        yield from own()
        return
    keys = (table.Key * batch)()
    values = (table.Leaf * batch)()
    for n in _lookup_batch_counts(table.map_fd, ffi.cast("void *", ct.addressof(keys)),
                                  ffi.cast("void *", ct.addressof(values)), batch, None, table.Key.__name__):
        yield keys, values, n


def update_batch(fd: int, keys, values, count: int) -> None:
    """BPF_MAP_UPDATE_BATCH of `count` packed keys and values (any buffer: numpy
    arrays, bytes, ctypes arrays); all or an error naming how far it got."""
    n = ffi.new("uint32_t *", count)
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    rc = lib().bpf_map_update_batch(fd, ffi.from_buffer(keys), ffi.from_buffer(values), n, opts)
    if rc < 0:
        raise OSError(-rc, f"bpf_map_update_batch: {os.strerror(-rc)} after {n[0]} of {count} entries")


# Errors by which a kernel refuses a batch call on a map type (ENOTSUPP, 524, is the
# kernel's own and may leak to user space).
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)


def delete_batch(fd: int, keys, key_size: int, count: int) -> int:
    """Delete `count` packed keys (any buffer) with BPF_MAP_DELETE_BATCH, in their
    order; returns how many were present. The kernel stops at a key that is not
    there (ENOENT): that key is skipped and the batch goes on after it. If the
    kernel refuses batches for the map (its type has no batch delete), the keys are
    deleted one by one instead."""
    buf = ffi.from_buffer("uint8_t[]", keys)
    n = ffi.new("uint32_t *")
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    done = deleted = 0
    while done < count:
        n[0] = count - done
        rc = lib().bpf_map_delete_batch(fd, buf + done * key_size, n, opts)
        if rc < 0 and -rc in _NO_BATCH and done == 0:
            # Refused before any key (no batch op for this map type): the kernel did not
            # write the count back, so n still holds what was asked.
            return _delete_each(fd, buf, key_size, 0, count)
        deleted += n[0]
        done += n[0]
        if rc >= 0:
            break
        if -rc == errno.ENOENT:
            done += 1            # this key was not there: go on after it
        else:
            raise OSError(-rc, f"bpf_map_delete_batch: {os.strerror(-rc)} after {done} of {count} keys")
    return deleted


def _delete_each(fd: int, buf, key_size: int, start: int, count: int) -> int:
    deleted = 0
    for i in range(start, count):
        rc = lib().bpf_map_delete_elem(fd, buf + i * key_size)
        if rc == -errno.ENOENT:
            continue
        _check(rc, f"bpf_map_delete_elem(key {i} of {count})")
        deleted += 1
    return deleted


def lookup_batches_raw(fd: int, key_size: int, value_size: int, batch: int = 8192, limit: int | None = None,
                       cursor: BatchCursor | None = None) -> Iterator[tuple[memoryview, memoryview, int]]:
    """(keys, values, count) chunks of any map read with BPF_MAP_LOOKUP_BATCH into raw
    buffers, at most `limit` keys in all (an array's first ones, or from `cursor` on).
    `value_size` is what the kernel copies per key: for a per-CPU map, the possible CPUs
    times the value rounded up to 8 bytes. The buffers are reused: a chunk is valid until
    the next."""
    if limit is not None:
        batch = max(1, min(batch, limit))
    keys = ffi.new("uint8_t[]", batch * key_size)
    values = ffi.new("uint8_t[]", batch * value_size)
    for n in _lookup_batch_counts(fd, keys, values, batch, limit, f"fd {fd}", cursor):
        yield memoryview(ffi.buffer(keys, n * key_size)), memoryview(ffi.buffer(values, n * value_size)), n


def zero_entries(fd: int, ids, value_size: int) -> int:
    """Write zeros to keys `ids` (u32) of an array map in one batch (`value_size` as in
    lookup_batches_raw: per-CPU maps take every CPU's copy). `ids`: ints, or a buffer
    of native u32 (a numpy uint32 column: taken as it is, not copied id by id).
    Returns the count."""
    n = len(ids)
    if n == 0:
        return 0
    try:
        view = memoryview(ids)
    except TypeError:   # a list or other sequence of ints
        view = memoryview(array("I", ids))
    if view.format != "I" or view.itemsize != 4 or not view.c_contiguous or view.ndim != 1:
        view = memoryview(array("I", ids))
    keys = ffi.from_buffer("uint32_t[]", view)
    vals = ffi.new("uint8_t[]", n * value_size)
    count = ffi.new("uint32_t *", n)
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    _check(lib().bpf_map_update_batch(fd, keys, vals, count, opts), "bpf_map_update_batch")
    return n
