"""Table layout and AGE formatting (kubectl's tabwriter and HumanDuration)."""
from __future__ import annotations

import pytest

from controlplane.kubectl.printers.age import human_duration
from controlplane.kubectl.printers.table import format_describe, format_table


def test_table_pads_all_but_the_last_column() -> None:
    assert format_table([["NAME", "AGE"], ["kubernetes", "5d"]]) == "NAME         AGE\nkubernetes   5d"
    assert format_table([["A", "B"], ["x", "y"]]) == "A     B\nx     y"  # minimum width 6


def test_describe_aligns_second_column_only_within_runs() -> None:
    text = format_describe([["Port:", "<unset>", "80/TCP"], ["TargetPort:", "80/TCP"], ["Events:", "<none>"]])
    assert text.splitlines() == ["Port:        <unset>  80/TCP", "TargetPort:  80/TCP", "Events:      <none>"]


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (119, "119s"), (120, "2m"), (185, "3m5s"), (600, "10m"), (3 * 3600 - 1, "179m"),
    (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"), (47 * 3600, "47h"),
    (48 * 3600, "2d"), (50 * 3600, "2d2h"), (8 * 86400, "8d"), (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text
