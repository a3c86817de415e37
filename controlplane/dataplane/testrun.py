"""Run one packet through a loaded XDP program with BPF_PROG_TEST_RUN.

The kernel runs the program on a copy of the bytes and reports the verdict, the
rewritten frame and the time taken; nothing is transmitted (XDP_TX and
XDP_REDIRECT are only returned).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from .libbpf import ffi, lib

XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
# XDP test-run needs at least an Ethernet header and keeps frames within a page
# minus headroom and skb_shared_info; the output gets room for headers we add.
MIN_FRAME = 14
OUT_ROOM = 512
# struct __sk_buff (uapi/linux/bpf.h) as a socket-buffer test-run takes it, the fields set
# here: the kernel refuses a context with any field it does not take set.
SKB_SIZE, SKB_INGRESS_IFINDEX, SKB_GSO_SEGS, SKB_GSO_SIZE = 192, 36, 164, 176
XDP_MD_ROOM = 64   # bytes for struct xdp_md (24 today)


@dataclass(frozen=True)
class TestRunResult:
    verdict: int
    data: bytes
    duration_ns: int

    @property
    def verdict_name(self) -> str:
        return XDP_VERDICTS.get(self.verdict, f"XDP_{self.verdict}")


class TestRunner:
    __test__ = False  # not a pytest test class, whatever its name
    """Reusable buffers for running many packets through one program."""

    def __init__(self, prog_fd: int, max_frame: int = 3500, skb: bool = False) -> None:
        """`skb`: the program takes a socket buffer (a tc program), not an XDP frame."""
        self.prog_fd = prog_fd
        self.skb = skb
        self._out = ffi.new("uint8_t[]", max_frame + OUT_ROOM)
        self._out_size = max_frame + OUT_ROOM
        self._opts = ffi.new("struct bpf_test_run_opts *")

    def run(self, frame: bytes, repeat: int = 1, ingress_ifindex: int = 0, gso_size: int = 0) -> TestRunResult:
        """`ingress_ifindex`: an XDP frame arrives on that device of the calling thread's
        network namespace (the program's FIB lookups see that namespace; 0: the namespace's
        loopback); a socket buffer was received on it (forwarded: 0 is one the node sent).
        `gso_size` (a socket buffer only): a GSO one cutting segments of that size."""
        if len(frame) < MIN_FRAME:
            raise ValueError(f"frame of {len(frame)} bytes: test-run needs at least {MIN_FRAME}")
        opts = self._opts
        data_in = ffi.from_buffer(frame)
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in = data_in
        opts.data_size_in = len(frame)
        opts.data_out = self._out
        opts.data_size_out = self._out_size
        opts.repeat = repeat
        opts.retval = 0
        opts.duration = 0
        ctx = None
        if self.skb and (ingress_ifindex or gso_size):
            ctx = ffi.new("uint32_t[]", SKB_SIZE // 4)
            ctx[SKB_INGRESS_IFINDEX // 4] = ingress_ifindex
            if gso_size:
                ctx[SKB_GSO_SEGS // 4] = max(1, -(-(len(frame) - 42) // gso_size))   # (past eth/ip/udp)
                ctx[SKB_GSO_SIZE // 4] = gso_size
        elif gso_size:
            raise ValueError("gso_size: a socket buffer's (TestRunner(skb=True))")
        elif not self.skb:
            # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, ...
            # Room for fields a later kernel may add: the kernel takes a longer context
            # whose tail is zero.
            ctx = ffi.new("uint32_t[]", XDP_MD_ROOM // 4)
            ctx[1], ctx[3] = len(frame), ingress_ifindex
        opts.ctx_in = ctx if ctx is not None else ffi.NULL
        opts.ctx_size_in = ffi.sizeof(ctx) if ctx is not None else 0
        while True:
            rc = lib().bpf_prog_test_run_opts(self.prog_fd, opts)
            if rc == 0:
                break
            err = -rc if rc < 0 else ffi.errno
            if err == errno.EINTR:
                continue
            raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
        out = bytes(ffi.buffer(self._out, opts.data_size_out))
        return TestRunResult(opts.retval, out, opts.duration)

    def duration_ns(self, frame: bytes) -> int:
        """One run, repeat=1: the kernel's own measurement, no copy of the output."""
        return self.run(frame).duration_ns
