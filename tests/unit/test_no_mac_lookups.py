"""Network safety: a test's scapy frame without a destination MAC must not make scapy ask
ARP from the root namespace (tests/conftest.py turns the lookup off for every session)."""
from __future__ import annotations

import pytest
from scapy.error import ScapyNoDstMacException
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether


def test_a_frame_without_a_destination_mac_is_refused_not_looked_up() -> None:
    # (a loopback address: were the guard gone, scapy would answer it without asking ARP,
    # so this test can fail without sending anything)
    with pytest.raises(ScapyNoDstMacException):
        bytes(Ether() / IP(dst="127.0.0.2") / TCP())
    assert len(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="10.96.0.1") / TCP())) == 54
