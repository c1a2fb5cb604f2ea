#!/usr/bin/env python3
"""Table from results.tsv: mean worker Ir per (version, workload), minus the
same binary's idle run, divided by the workload's count."""
import collections, re
runs = collections.defaultdict(list)
for line in open(__import__("os").path.join(__import__("os").path.dirname(__file__), "results.tsv")):
    f = line.rstrip("\n").split("\t")
    if len(f) < 5 or not f[0][:2] in ("b-", "a-", "n-") or f[0].endswith("small"):
        continue
    ver, binary, wl = f[1], f[2], f[3].split()[0]
    ir = int(f[4].split("=")[1])
    runs[(ver, binary, wl)].append(ir)
mean = lambda xs: sum(xs) / len(xs)
work = [("churn", "echo", 2000, "connection"), ("frame", "echo", 2000, "connection"),
        ("http", "echo", 5000, "request"), ("fanout", "broadcast", 100000, "delivery")]
print("| workload | Ir before (runs) | Ir after (runs) | after/before | net Ir per op before | after | delta per op |")
print("|---|---|---|---|---|---|---|")
for wl, binary, n, unit in work:
    b, a = runs[("before", binary, wl)], runs[("after", binary, wl)]
    bi, ai = mean(runs[("before", binary, "idle")]), mean(runs[("after", binary, "idle")])
    pb, pa = (mean(b) - bi) / n, (mean(a) - ai) / n
    fmt = lambda xs: ", ".join("%d" % x for x in xs)
    print("| %s | %s | %s | %.4f | %.1f /%s | %.1f | %+.1f |" % (wl, fmt(b), fmt(a), mean(a) / mean(b), pb, unit, pa, pa - pb))
for k in sorted(runs):
    if k[2] == "idle" or k[0] == "noapi":
        print(k, runs[k])
