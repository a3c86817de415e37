"""Column alignment as Go's text/tabwriter does it for kubectl.

Each cell is followed by padding; every column but the last is as wide as its widest cell
plus the padding (and at least `min_width`); the last cell of a line is not padded.
"""
from __future__ import annotations


def format_table(rows: list[list[str]], padding: int = 3, min_width: int = 6) -> str:
    if not rows:
        return ""
    columns = max(len(r) for r in rows)
    widths = [0] * columns
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell) + padding, min_width)
    lines = []
    for row in rows:
        parts = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        parts.append(row[-1])
        lines.append("".join(parts))
    return "\n".join(lines)


def format_describe(lines: list[list[str]]) -> str:
    """`kubectl describe` layout: tabwriter(minwidth 0, padding 2), where a column is aligned
    only across consecutive lines that have a cell in it."""
    out: list[str] = []
    widths_for: list[list[int]] = [[] for _ in lines]
    max_cells = max((len(l) - 1 for l in lines), default=0)
    for col in range(max_cells):
        i = 0
        while i < len(lines):
            if len(lines[i]) - 1 > col:
                j = i
                while j < len(lines) and len(lines[j]) - 1 > col:
                    j += 1
                width = max(len(lines[k][col]) for k in range(i, j)) + 2
                for k in range(i, j):
                    widths_for[k].append(width)
                i = j
            else:
                i += 1
    for line, widths in zip(lines, widths_for):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        out.append("".join(cells) + line[-1])
    return "\n".join(out)
