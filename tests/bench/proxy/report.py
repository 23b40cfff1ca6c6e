#!/usr/bin/env python3
"""Summarise bench-proxy.sh's results.tsv: medians with their spread across
rounds, same-round ratios of the gateway to its peers, and each target met
or not met.

    report.py RESULTS.tsv ENVIRONMENT.txt REPORT.md

Prints the report and writes it, as Markdown, to REPORT.md.
"""

import csv
import statistics
import sys
from collections import defaultdict

CONTENDER_ORDER = ["gateway", "gateway-policies", "nginx", "haproxy", "direct"]
LABELS = {
    "gateway": "gateway",
    "gateway-policies": "gateway + policies",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "direct": "direct (no proxy)",
}
# Targets the gateway is measured against.
SLOW_DIRECT_MIN = 0.95
SLOW_KIB_PER_CONN_MAX = 10.0
POLICY_OVERHEAD_MAX = 0.03


def number(text):
    return None if text in ("", "NA") else float(text)


def load(path):
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req",
                        "switches_per_req", "idle_rss_kb", "hwm_kb",
                        "threads_idle", "threads_max", "errors", "requests",
                        "conns", "proxy_cpu_busy_pct", "proxy_cpu_steal_pct",
                        "other_load_pct", "retries"):
                row[key] = number(row[key])
            row["proxy_own_pct"] = (
                row["cpu_us_per_req"] * row["rps"] / 1e4
                if row["cpu_us_per_req"] is not None else None)
            row["round"] = int(row["round"])
            rows.append(row)
    return rows


def spread(values, fmt):
    """Formats the median and, with several values, [min-max]."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    text = fmt(statistics.median(values))
    if len(values) > 1:
        text += f" [{fmt(min(values))}–{fmt(max(values))}]"
    return text


def fmt_int(v):
    return f"{v:,.0f}"


def fmt_1(v):
    return f"{v:.1f}"


def fmt_2(v):
    return f"{v:.2f}"


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def kib_per_conn(row):
    if row["hwm_kb"] is None or row["idle_rss_kb"] is None:
        return None
    return (row["hwm_kb"] - row["idle_rss_kb"]) / row["conns"]


def same_round_ratios(by_round, a, b, key):
    """Ratios a/b of field key, one per round that measured both."""
    ratios = []
    for contenders in by_round.values():
        if a in contenders and b in contenders:
            x, y = contenders[a][key], contenders[b][key]
            if x is not None and y:
                ratios.append(x / y)
    return ratios


def scenario_table(rows):
    out = [
        "| contender | req/s | p50 ms | p99 ms | CPU µs/req | proxy CPU % "
        "| context switches/req | peak RSS MiB | KiB/conn | threads idle→max "
        "| errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_contender = defaultdict(list)
    for row in rows:
        by_contender[row["contender"]].append(row)
    for name in CONTENDER_ORDER:
        runs = by_contender.get(name)
        if not runs:
            continue
        hwm = [r["hwm_kb"] / 1024 if r["hwm_kb"] is not None else None
               for r in runs]
        idle = [r["threads_idle"] for r in runs if r["threads_idle"] is not None]
        top = [r["threads_max"] for r in runs if r["threads_max"] is not None]
        threads = f"{min(idle):.0f}→{max(top):.0f}" if idle and top else "n/a"
        out.append(
            f"| {LABELS[name]} | {spread([r['rps'] for r in runs], fmt_int)} "
            f"| {spread([r['p50_ms'] for r in runs], fmt_ms)} "
            f"| {spread([r['p99_ms'] for r in runs], fmt_ms)} "
            f"| {spread([r['cpu_us_per_req'] for r in runs], fmt_1)} "
            f"| {spread([r['proxy_own_pct'] for r in runs], fmt_int)} "
            f"| {spread([r['switches_per_req'] for r in runs], fmt_2)} "
            f"| {spread(hwm, fmt_1)} "
            f"| {spread([kib_per_conn(r) for r in runs], fmt_1)} "
            f"| {threads} | {sum(r['errors'] for r in runs):.0f} |")
    return out


def ratio_table(by_round):
    out = [
        "| same-round ratio | req/s | p50 | p99 | CPU µs/req |",
        "| --- | --- | --- | --- | --- |",
    ]
    pairs = [("gateway", "nginx"), ("gateway", "haproxy"),
             ("gateway", "direct"), ("gateway-policies", "gateway")]
    for a, b in pairs:
        rps = same_round_ratios(by_round, a, b, "rps")
        if not rps:
            continue
        cells = [spread(rps, fmt_2)]
        for key in ("p50_ms", "p99_ms", "cpu_us_per_req"):
            cells.append(spread(same_round_ratios(by_round, a, b, key), fmt_2))
        out.append(f"| {LABELS[a]} / {LABELS[b]} | " + " | ".join(cells) + " |")
    return out


def load_note(rows):
    """Describes how busy both CPUs were, so a reader sees whether the proxy
    or the load side limited the rate, and how much other load was there."""
    proxied = [r for r in rows if r["proxy_own_pct"] is not None]
    retried = sum(1 for r in rows if r["retries"])
    return (
        "During the proxied runs the proxy CPU was "
        f"{spread([r['proxy_cpu_busy_pct'] for r in proxied], fmt_int)} % "
        "busy. Processes outside the benchmark used "
        f"{spread([r['other_load_pct'] for r in rows], fmt_int)} % of both "
        f"CPUs and steal was "
        f"{spread([r['proxy_cpu_steal_pct'] for r in rows], fmt_1)} % "
        f"(median [min–max] over all runs; {retried} of {len(rows)} runs "
        "were repeated because of such load).")


def verdict(ok):
    return "**met**" if ok else "**not met**"


def targets(scenarios):
    """Judges each target on the median of its same-round ratios."""
    out = []

    def median_ratio(name, a, b, key):
        values = same_round_ratios(scenarios[name], a, b, key)
        return statistics.median(values) if values else None

    for name in scenarios:
        for peer in ("nginx", "haproxy"):
            r = median_ratio(name, "gateway", peer, "rps")
            if r is not None:
                gap = "" if r >= 1 else f", {100 * (1 - r):.0f} % fewer"
                out.append(f"- {name}: req/s at least {LABELS[peer]}'s: "
                           f"{verdict(r >= 1)} (ratio {r:.2f}{gap})")
            r = median_ratio(name, "gateway", peer, "p99_ms")
            if r is not None:
                gap = "" if r <= 1 else f", {100 * (r - 1):.0f} % higher"
                out.append(f"- {name}: p99 no worse than {LABELS[peer]}'s: "
                           f"{verdict(r <= 1)} (ratio {r:.2f}{gap})")
        r = median_ratio(name, "gateway", "nginx", "cpu_us_per_req")
        if r is not None:
            gap = "" if r <= 1 else f", {100 * (r - 1):.0f} % more"
            out.append(f"- {name}: CPU per request no more than nginx's: "
                       f"{verdict(r <= 1)} (ratio {r:.2f}{gap})")

    slow = scenarios.get("slow2000")
    if slow:
        r = median_ratio("slow2000", "gateway", "direct", "rps")
        if r is not None:
            out.append(f"- slow2000: at least {100 * SLOW_DIRECT_MIN:.0f} % of the "
                       f"direct rate: {verdict(r >= SLOW_DIRECT_MIN)} "
                       f"(ratio {r:.3f})")
        runs = [c["gateway"] for c in slow.values() if "gateway" in c]
        if runs:
            constant = all(r["threads_max"] == r["threads_idle"] for r in runs)
            counts = sorted({f"{r['threads_idle']:.0f}→{r['threads_max']:.0f}"
                             for r in runs})
            out.append(f"- slow2000: thread count constant under 2,000 "
                       f"clients: {verdict(constant)} "
                       f"(idle→max per round: {', '.join(counts)})")
            per_conn = statistics.median(kib_per_conn(r) for r in runs)
            out.append(f"- slow2000: at most {SLOW_KIB_PER_CONN_MAX:.0f} KiB "
                       f"per connection: "
                       f"{verdict(per_conn <= SLOW_KIB_PER_CONN_MAX)} "
                       f"({per_conn:.1f} KiB: peak RSS minus idle RSS over "
                       f"2,000 client connections)")

    small = scenarios.get("small64")
    cpu = median_ratio("small64", "gateway-policies", "gateway",
                       "cpu_us_per_req") if small else None
    rps = median_ratio("small64", "gateway-policies", "gateway",
                       "rps") if small else None
    if cpu is None:
        out.append("- policies' overhead under 3 %: **not measured** (the "
                   "gateway rejected a route with rate_limit, breaker and "
                   "bulkhead)")
    else:
        out.append(f"- small64: policies' overhead under "
                   f"{100 * POLICY_OVERHEAD_MAX:.0f} % of CPU per request: "
                   f"{verdict(cpu - 1 < POLICY_OVERHEAD_MAX)} "
                   f"({100 * (cpu - 1):+.1f} % CPU per request, "
                   f"{100 * (rps - 1):+.1f} % req/s)")
    return out


def main():
    results, environment, report = sys.argv[1:4]
    rows = load(results)
    scenarios = {}
    for row in rows:
        rounds = scenarios.setdefault(row["scenario"], {})
        rounds.setdefault(row["round"], {})[row["contender"]] = row

    with open(environment) as f:
        lines = [f"- {line.rstrip()}" for line in f if line.strip()]
    lines.append("")
    lines.append("Medians across rounds, [min–max] in brackets. Ratios are "
                 "taken within each round, then their median. Proxy CPU % is "
                 "the proxy's own CPU time over the run's wall time (100 = "
                 "its whole CPU). KiB/conn is (peak RSS − idle RSS) / client "
                 "connections.")
    for name, by_round in scenarios.items():
        scenario_rows = [r for c in by_round.values() for r in c.values()]
        lines.append("")
        lines.append(f"### {name} ({scenario_rows[0]['conns']:.0f} "
                     f"connections, {len(by_round)} rounds)")
        lines.append("")
        lines.extend(scenario_table(scenario_rows))
        lines.append("")
        lines.append(load_note(scenario_rows))
        lines.append("")
        lines.extend(ratio_table(by_round))
    lines.append("")
    lines.append("### Targets")
    lines.append("")
    lines.extend(targets(scenarios))
    text = "\n".join(lines) + "\n"
    with open(report, "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
