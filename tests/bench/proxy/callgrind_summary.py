#!/usr/bin/env python3
"""Summarise a callgrind output file per request.

    callgrind_summary.py CALLGRIND_OUT REQUESTS [TOP [FUNCTION]]

Prints the instructions (Ir) per request, the TOP functions (default 25)
by self cost with their main callers, and the calls per request to the
allocator with the functions that make them.

REQUESTS is what the load generator completed in the measured window. With
many requests in flight, that window also contains work for requests that
started before it or finish after it. Naming a FUNCTION called once per
request (curl_multi_remove_handle for the gateway) counts requests by its
calls instead, from the same window.

It reads the file itself rather than through callgrind_annotate, because
callgrind_annotate 3.19 books the cost of a "calls=0" edge (clone ->
start_thread, which --separate-threads=no writes) as self cost, so every
thread's whole cost shows up under clone.

Callgrind does not replace the allocator, so the allocation counts are
calls to libc's own entry points. An allocation made inside libcurl or
libmicrohttpd is booked to its caller there. Functions of libraries
without symbols show as addresses.
"""

import re
import sys
from collections import defaultdict

ALLOCATORS = ("malloc", "calloc", "realloc", "free", "posix_memalign",
              "aligned_alloc", "memalign")
# "(id) name", "(id)" (compressed) or "name" (--compress-strings=no).
NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")


class Profile:
    def __init__(self):
        self.total = 0
        self.self_cost = defaultdict(int)  # function -> Ir
        self.edges = defaultdict(lambda: [0, 0])  # (caller, callee) -> calls, Ir
        self.objects = {}  # function -> object file


def resolve(table, text):
    match = NAME.match(text)
    if not match:
        return text
    ident, name = match.groups()
    if name is not None:
        table[ident] = name
    return table.get(ident, f"({ident})")


def short_object(path):
    return path.rsplit("/", 1)[-1] if path else "?"


def read(path):
    prof = Profile()
    fn_names, ob_names = {}, {}
    obj = fn = callee = None
    pending_call = None  # (caller, callee, calls) awaiting its cost line
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if sep and key in ("ob", "cob"):
                name = resolve(ob_names, value)
                if key == "ob":
                    obj = name
                continue
            if sep and key == "fn":
                fn = resolve(fn_names, value)
                prof.objects.setdefault(fn, short_object(obj))
                continue
            if sep and key == "cfn":
                callee = resolve(fn_names, value)
                continue
            if sep and key == "calls":
                pending_call = (fn, callee, int(value.split()[0]))
                continue
            if sep:
                continue  # fl, fi, fe, cfi, cfl
            if line.startswith(("summary:", "totals:")):
                if line.startswith("summary:") or not prof.total:
                    prof.total = int(line.split()[1])
                continue
            fields = line.split()
            if len(fields) < 2 or not fields[0].lstrip("+-*").isdigit():
                continue
            cost = int(fields[1])
            if pending_call is not None:
                caller, target, calls = pending_call
                edge = prof.edges[(caller, target)]
                edge[0] += calls
                edge[1] += cost
                pending_call = None
            else:
                prof.self_cost[fn] += cost
    return prof


def base_name(name):
    """Strips the suffix callgrind may add to a name ("malloc'2")."""
    return name.split("'")[0]


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    prof = read(path)
    if len(sys.argv) > 4:
        counter = sys.argv[4]
        calls = sum(n for (_, callee), (n, _) in prof.edges.items()
                    if base_name(callee) == counter)
        print(f"{requests} requests completed by the load generator; "
              f"{calls} calls to {counter}, used as the request count")
        requests = calls
    per = 1.0 / requests

    print(f"{prof.total:,} Ir over {requests} requests: "
          f"{prof.total * per:,.0f} Ir per request")
    print()
    print(f"top {top} functions by self cost (Ir per request, share), "
          f"with their main callers (calls per request, inclusive Ir per "
          f"request):")
    callers = defaultdict(list)
    for (caller, callee), (calls, cost) in prof.edges.items():
        callers[callee].append((cost, calls, caller))
    ranked = sorted(prof.self_cost.items(), key=lambda kv: -kv[1])
    for name, cost in ranked[:top]:
        share = 100.0 * cost / prof.total if prof.total else 0
        print(f"  {cost * per:9,.0f}  {share:5.1f} %  {name} "
              f"[{prof.objects.get(name, '?')}]")
        for c_cost, c_calls, caller in sorted(callers[name],
                                              reverse=True)[:3]:
            print(f"  {'':9s}  {'':5s}    <- {caller} "
                  f"({c_calls * per:.2f} calls, {c_cost * per:,.0f} Ir)")
    print()

    per_allocator = defaultdict(int)
    by_caller = defaultdict(int)
    for (caller, callee), (calls, _) in prof.edges.items():
        name = base_name(callee)
        # realloc calling malloc, or free calling its own alias, is one
        # allocator call already counted at its entry.
        if name in ALLOCATORS and base_name(caller) not in ALLOCATORS:
            per_allocator[name] += calls
            if name != "free":
                by_caller[caller] += calls
    print("allocator calls per request:")
    for name in ALLOCATORS:
        if per_allocator.get(name):
            print(f"  {name:22s} {per_allocator[name] * per:8.2f}")
    allocations = sum(n for k, n in per_allocator.items() if k != "free")
    print(f"  {'allocations (not free)':22s} {allocations * per:8.2f}")
    print("functions that call the allocator most (allocations per request):")
    for caller, calls in sorted(by_caller.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {calls * per:8.2f}  {caller} "
              f"[{prof.objects.get(caller, '?')}]")


if __name__ == "__main__":
    main()
