"""svcxdp's backend-selection annotations on a Service, checked at apply time.

  svcxdp.io/lb-algorithm:      one of the datapath's algorithms (bpf/svcxdp.h SVCXDP_ALG_*)
  svcxdp.io/backend-weights:   "KEY=WEIGHT,KEY=WEIGHT"; KEY is a pod name or an IPv4
                               address, WEIGHT an integer 0-65535 (0: no new flows);
                               endpoints not listed weigh 1
  svcxdp.io/maglev-table-size: a prime 2..2^24 (Maglev's M; default 16381)

The agent parses the same annotations with the functions here, so what validation
accepts is exactly what the node applies.
"""
from __future__ import annotations

from controlplane.dataplane.layout import ALGORITHMS
from controlplane.maglev.primes import validate_table_size

from ..field_errors import FieldError, invalid, not_supported
from . import names

LB_ALGORITHM = "svcxdp.io/lb-algorithm"
BACKEND_WEIGHTS = "svcxdp.io/backend-weights"
MAGLEV_TABLE_SIZE = "svcxdp.io/maglev-table-size"
MAX_WEIGHT = 65535


def _path(key: str) -> str:
    return f"metadata.annotations[{key}]"


def parse_backend_weights(text: str) -> dict[str, int]:
    """"web-0=3, 10.244.1.5=1" -> {"web-0": 3, "10.244.1.5": 1}; ValueError if malformed."""
    out: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY=WEIGHT")
        if names.dns1123_subdomain(key) and names.ip_address(key):
            raise ValueError(f"{key!r} is neither a pod name nor an IP address")
        if not value.isdigit() or int(value) > MAX_WEIGHT:
            raise ValueError(f"weight {value!r} of {key!r} must be an integer 0-{MAX_WEIGHT}")
        if key in out:
            raise ValueError(f"{key!r} is listed twice")
        out[key] = int(value)
    return out


def parse_table_size(text: str) -> int:
    """The Maglev table size annotation as a valid M; ValueError if it is not one."""
    if not text.strip().isdigit():
        raise ValueError("must be a prime number")
    return validate_table_size(int(text.strip()))


def validate_lb_annotations(annotations: dict[str, str] | None) -> list[FieldError]:
    errs: list[FieldError] = []
    annotations = annotations or {}
    alg = annotations.get(LB_ALGORITHM)
    if alg is not None and alg not in ALGORITHMS:
        errs.append(not_supported(_path(LB_ALGORITHM), alg, sorted(ALGORITHMS)))
    for key, parse in ((BACKEND_WEIGHTS, parse_backend_weights), (MAGLEV_TABLE_SIZE, parse_table_size)):
        value = annotations.get(key)
        if value is None:
            continue
        try:
            parse(value)
        except ValueError as exc:
            errs.append(invalid(_path(key), value, str(exc)))
    return errs
