"""The dataplane model's fast IPv4 check accepts exactly what ipaddress does."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.dataplane.model import _valid_ipv4


def reference(ip: str) -> bool:
    try:
        ipaddress.IPv4Address(ip)
        return True
    except ValueError:
        return False


OCTETS = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["", "00", "01", "007", " 1", "1 ", "+1", "-1",
                                                                    "١", "²", "0x1", "1e2", "256", "999", "1000"]))


@settings(max_examples=3000, deadline=None)
@given(st.lists(OCTETS, min_size=1, max_size=6))
def test_dotted_candidates_agree_with_ipaddress(octets):
    ip = ".".join(octets)
    assert _valid_ipv4(ip) == reference(ip), ip


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="0123456789. x-", max_size=20))
def test_arbitrary_text_agrees_with_ipaddress(ip):
    assert _valid_ipv4(ip) == reference(ip), ip


def test_examples():
    assert _valid_ipv4("10.96.0.1") and _valid_ipv4("0.0.0.0")
    for bad in ("10.96.0", "10.96.0.1.2", "10.096.0.1", "10.96.0.256", "", "a.b.c.d", "10.96.0.1 "):
        assert not _valid_ipv4(bad), bad
