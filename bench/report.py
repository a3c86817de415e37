#!/usr/bin/env python3
"""Markdown report of the datapath benchmark (bench/bench_datapath.py).

Reads a pytest-benchmark JSON file, prints the table and writes it as Markdown:

    .venv/bin/python bench/report.py [bench/results/datapath.json] [-o bench/results/datapath.md]

Every figure comes from the benchmark's extra_info (the kernel-measured ns/packet
of each round), not from pytest-benchmark's wall-clock stats, which include
Python and the syscall. Ratios divide by the floor (empty XDP program) measured
in the same run, in the same configuration.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "datapath.json"
DEFAULT_MD = HERE / "results" / "datapath.md"

PATH_ORDER = ("floor", "non_service", "established", "reply", "new_flow")
PATH_LABEL = {"floor": "floor (empty XDP)", "non_service": "non-service packet",
              "established": "established flow", "reply": "reply (reverse NAT)",
              "new_flow": "new flow"}
RATIO_TARGETS = {"new_flow": 4.0, "established": 2.5}
SCALE_TOLERANCE = 0.10
LABEL = ("In-kernel cost on one core via BPF_PROG_TEST_RUN, timer overhead included; "
         "not NIC line rate.")


def _n(x: int) -> str:
    return f"{x:,}"


def _paired(x: dict) -> str:
    if "paired_ratio_median" not in x:
        return "—"
    return (f"{x['paired_ratio_median']:.2f}× ({x['paired_ratio_p25']:.2f}–"
            f"{x['paired_ratio_p75']:.2f})")


def _rows(entries: list[dict]) -> dict[tuple[str, int, int], dict]:
    rows = {}
    for e in entries:
        x = e.get("extra_info", {})
        if x.get("suite") != "datapath":
            continue
        rows[(x["path"], x["services"], x["ct_entries"])] = x
    return rows


def render(entries: list[dict], machine: dict | None = None, commit: dict | None = None,
           when: str | None = None) -> str:
    rows = _rows(entries)
    if not rows:
        return "(no datapath results)"
    services = sorted({s for _, s, _ in rows})
    cts = sorted({c for _, _, c in rows})
    any_row = next(iter(rows.values()))
    out: list[str] = []
    out.append("# svcxdp datapath: per-packet cost (BPF_PROG_TEST_RUN)\n")
    out.append(f"**{LABEL}** Each packet is one `repeat=1` test-run call (so the DNAT "
               f"rewrite never accumulates); the kernel's `duration` is summed over "
               f"{_n(any_row['packets_per_round'])} packets per round, {any_row['rounds']} rounds "
               f"(+{any_row['warmup_rounds']} warm-up). Median and p25–p75 are over the rounds' "
               f"ns/packet. The ratio divides by the floor — an empty XDP program measured the "
               f"same way, in the same run, just before that configuration's paths. The paired "
               f"ratio is a drift-robust second view: within every round each path packet is "
               f"followed by one floor packet, and the round's ratio is path ns / floor ns; "
               f"median and p25–p75 over rounds. "
               f"Mpps = 1000 / median ns (one core, this program only).\n")
    if any_row.get("quick"):
        out.append("*Quick mode (SVCXDP_BENCH_QUICK): fewer sizes and packets.*\n")
    if machine or commit or when:
        bits = []
        if machine:
            bits += [f"kernel {machine.get('kernel')}", f"CPU {machine.get('cpu_model')} "
                     f"×{machine.get('cpu_count')}", f"clocksource {machine.get('clocksource')}",
                     f"bcc {machine.get('bcc_version')}", f"Python {machine.get('python_version')}"]
        if commit:
            bits.append(f"commit {str(commit.get('id', ''))[:10]}"
                        + (" (dirty)" if commit.get("dirty") else ""))
        if when:
            bits.append(when)
        out.append("Machine: " + ", ".join(bits) + ".\n")

    out.append("| path | services | conntrack entries | median ns/pkt | p25–p75 | ratio to floor | "
               "paired ratio (p25–p75) | Mpps (1 core) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    floors = {(s, c): rows[("floor", s, c)]["ns_per_pkt_median"]
              for s in services for c in cts if ("floor", s, c) in rows}
    for c in cts:
        for s in services:
            for p in PATH_ORDER:
                x = rows.get((p, s, c))
                if x is None:
                    continue
                floor = floors.get((s, c))
                ratio = "1.00" if p == "floor" else (f"{x['ns_per_pkt_median'] / floor:.2f}×"
                                                     if floor else "—")
                out.append(f"| {PATH_LABEL[p]} | {_n(s)} | {_n(c)} | {x['ns_per_pkt_median']:.1f} | "
                           f"{x['ns_per_pkt_p25']:.1f}–{x['ns_per_pkt_p75']:.1f} | {ratio} | "
                           f"{_paired(x)} | {x['mpps_one_core']:.2f} |")
    out.append("")

    # ---- targets -------------------------------------------------------------------
    out.append("## Targets (checked here, never asserted in tests)\n")
    out.append("| target | services | conntrack | measured | met |")
    out.append("|---|---:|---:|---:|:-:|")
    for p, limit in RATIO_TARGETS.items():
        for c in cts:
            for s in services:
                x, floor = rows.get((p, s, c)), floors.get((s, c))
                if x is None or not floor:
                    continue
                r = x["ns_per_pkt_median"] / floor
                out.append(f"| {PATH_LABEL[p]} ≤ {limit}× floor | {_n(s)} | {_n(c)} | {r:.2f}× | "
                           f"{'yes' if r <= limit else '**no**'} |")
    lo, hi = services[0], services[-1]
    if lo != hi:
        for c in cts:
            for p in PATH_ORDER[1:]:
                a, b = rows.get((p, lo, c)), rows.get((p, hi, c))
                if a is None or b is None:
                    continue
                d = b["ns_per_pkt_median"] / a["ns_per_pkt_median"] - 1
                extra = ""
                if "paired_ratio_median" in a and "paired_ratio_median" in b:
                    dp = b["paired_ratio_median"] / a["paired_ratio_median"] - 1
                    extra = f" (paired ratio {dp:+.1%})"
                out.append(f"| {PATH_LABEL[p]}: {_n(hi)} vs {_n(lo)} services within "
                           f"±{SCALE_TOLERANCE:.0%} | {_n(hi)} | {_n(c)} | {d:+.1%}{extra} | "
                           f"{'yes' if abs(d) <= SCALE_TOLERANCE else '**no**'} |")
    out.append("")

    # ---- set-up facts ----------------------------------------------------------------
    notes = []
    for s in services:
        x = rows.get(("floor", s, cts[0]))
        if x and "setup_writer_sync_s" in x:
            notes.append(f"MapWriter.sync to {_n(s)} services: {x['setup_writer_sync_s']:.2f} s "
                         f"({_n(x.get('setup_writer_sync_added', 0))} added)")
    for c in cts:
        if not c:
            continue
        x = next((rows[k] for k in rows if k[0] == "floor" and k[2] == c), None)
        if x and "setup_ct_fill_s" in x:
            notes.append(f"conntrack fill of {_n(c)} entries with BPF_MAP_UPDATE_BATCH: "
                         f"{x['setup_ct_fill_s']:.2f} s; entries present when the configuration "
                         f"started: {_n(x['setup_ct_present_at_start'])}")
    loads = [v for x in rows.values() for v in x.get("loadavg_1m", [])]
    if loads:
        out.append(f"Machine load (1-min load average on {machine.get('cpu_count') if machine else '?'} "
                   f"cores) during the run: {min(loads):.2f}–{max(loads):.2f}; the machine is "
                   f"shared, so other work ran beside the benchmark.\n")
    if notes:
        out.append("Set-up: " + "; ".join(notes) + ".\n")
    out.append("The 65,535-service row is the most the default maps hold (max_services = 65,536, "
               "id 0 reserved). Every packet goes to one service and one flow, so lookups are "
               "cache-hot; new flows each insert two fresh conntrack entries (at 1,000,000 the "
               "LRU is near full and evicts). Each configuration starts from a freshly loaded "
               "dataplane; conntrack \"0\" means only the measured flow (plus the new flows "
               "the new-flow rounds add as they run).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?", default=str(DEFAULT_JSON))
    ap.add_argument("-o", "--output", default=None,
                    help=f"Markdown file to write (default {DEFAULT_MD} when reading the default JSON)")
    args = ap.parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    md = render(data.get("benchmarks", []), data.get("machine_info"), data.get("commit_info"),
                data.get("datetime"))
    print(md)
    output = args.output or (str(DEFAULT_MD) if Path(args.json).resolve() == DEFAULT_JSON else None)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(md)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
