#!/usr/bin/env python3
"""Short TCP connections for the through-the-stack benchmark (scenario 3).

  tcpload.py server PORT
      in the backend namespace: accept, read the request, answer a small HTTP
      response and close (the server closes first), one connection at a time.
  tcpload.py client FIRST_VIP COUNT PORT SECONDS WARMUP
      in the client namespace: one connection after another to a ClusterIP drawn
      uniformly from COUNT contiguous VIPs starting at FIRST_VIP; per connection:
      connect, send `GET / HTTP/1.1` with `Connection: close`, read to EOF, close
      with SO_LINGER 0 (RST: no TIME_WAIT piles up on either side). Prints JSON:
      connections completed after the warm-up, their latencies (connect to EOF), errors,
      and the machine's busy CPU seconds over the measured window (/proc/stat: every
      core, every process; an upper bound of what the connections cost).
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def server(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        try:
            c.recv(4096)
            c.sendall(RESPONSE)
        except OSError:
            pass
        c.close()


def busy_seconds() -> float:
    """Machine-wide non-idle CPU time so far (user..softirq, all cores), seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def client(first_vip: str, count: int, port: int, seconds: float, warmup: float) -> None:
    base = int(ipaddress.IPv4Address(first_vip))
    vips = [str(ipaddress.IPv4Address(base + i)) for i in range(count)]
    linger = struct.pack("ii", 1, 0)
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds
    rng = random.Random(1)
    measured_start = None
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(1.0)
        try:
            s.connect((vips[rng.randrange(count)], port))
            s.sendall(REQUEST)
            while s.recv(4096):
                pass
            ok = True
        except OSError:
            ok = False
        s.close()
        t1 = time.perf_counter()
        if t0 >= measure_from:
            if measured_start is None:
                measured_start = t0
                busy_start = busy_seconds()
            if ok:
                lat.append(t1 - t0)
            else:
                errors += 1
    elapsed = time.perf_counter() - (measured_start or end)
    busy = busy_seconds() - busy_start if measured_start is not None else 0.0
    print(json.dumps({"connections": len(lat), "errors": errors, "elapsed_s": elapsed, "busy_s": busy,
                      "latencies_us": [round(x * 1e6, 1) for x in lat]}))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
