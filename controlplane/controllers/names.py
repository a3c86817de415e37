"""Generated names: the pod-template-hash and the random 5-character suffixes Kubernetes
uses (`nginx-5d59d67564-x7k2p`, `nginx-abcde` for EndpointSlices)."""
from __future__ import annotations

import json
import random
from typing import Protocol

from controlplane.api.codec import encode
from controlplane.api.deployment import PodTemplateSpec
from controlplane.api.meta import ApiObject
from controlplane.store.interface import StoreReader

# k8s.io/apimachinery/pkg/util/rand: consonants and digits only, so no words are spelled.
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
_rng = random.SystemRandom()


def random_suffix(length: int = 5) -> str:
    return "".join(_rng.choice(ALPHANUMS) for _ in range(length))


# names.SimpleNameGenerator: the prefix is cut so that prefix + suffix fits a DNS label.
_MAX_NAME_LENGTH = 63
_SUFFIX_LENGTH = 5


def generated_name(prefix: str) -> str:
    """A name for `metadata.generateName` (the apiserver's BeforeCreate): the prefix, cut
    to 58 characters, and 5 random characters. Validation judges the result."""
    return prefix[:_MAX_NAME_LENGTH - _SUFFIX_LENGTH] + random_suffix(_SUFFIX_LENGTH)


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


class Names(Protocol):
    """Names already in use, for picking a free generated name."""

    def __contains__(self, name: object) -> bool: ...

    def add(self, name: str) -> None: ...


class StoreNames:
    """The names of one kind in one namespace: the ones added here, else a store lookup
    (so one controller run need not list every object to avoid a collision)."""

    def __init__(self, store: StoreReader, cls: type[ApiObject], namespace: str) -> None:
        self._store, self._cls, self._namespace = store, cls, namespace
        self._added: set[str] = set()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self._added or self._store.try_get(self._cls, self._namespace, name) is not None)

    def add(self, name: str) -> None:
        self._added.add(name)
