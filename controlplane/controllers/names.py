"""Generated names: the pod-template-hash and the random 5-character suffixes Kubernetes
uses (`nginx-5d59d67564-x7k2p`, `nginx-abcde` for EndpointSlices)."""
from __future__ import annotations

import json
import random

from controlplane.api.codec import encode
from controlplane.api.deployment import PodTemplateSpec

# k8s.io/apimachinery/pkg/util/rand: consonants and digits only, so no words are spelled.
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
_rng = random.SystemRandom()


def random_suffix(length: int = 5) -> str:
    return "".join(_rng.choice(ALPHANUMS) for _ in range(length))


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    return "".join(ALPHANUMS[ord(ch) % len(ALPHANUMS)] for ch in text)


def template_hash(template: PodTemplateSpec) -> str:
    """The `pod-template-hash` label value: FNV-32a of the template, safe-encoded."""
    canonical = json.dumps(encode(template), sort_keys=True, separators=(",", ":")).encode()
    return safe_encode(str(_fnv32a(canonical)))
