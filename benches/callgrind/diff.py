#!/usr/bin/env python3
"""diff.py LABEL_BEFORE LABEL_AFTER [N]: the worker's self Ir per function
(callgrind_annotate, exclusive, file prefixes dropped), the N biggest changes."""
import re, subprocess, sys, glob, os
MODE = os.environ.get("INCL", "no")
def load(label):
    f = sorted(glob.glob("/tmp/mcg/%s/cg.*" % label), key=lambda p: int(p.rsplit(".", 1)[1]))[-1]
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", "--inclusive=" + MODE, f], capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines():
        m = re.match(r"^ *([0-9,]+) \([ 0-9.]+%\)  (.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2)
        if "(" in name and name.rstrip().endswith("x)"):
            continue
        name = name.replace("/work/wt/m-before/", "").replace("/work/wt/m-after/", "")
        name = re.sub(r" \[.*\]$", "", name)
        name = name.split(":", 1)[1] if ":" in name and not name.startswith("<") and not name.startswith("???") else name
        name = name.replace("???:", "")
        d[name] = d.get(name, 0) + int(m.group(1).replace(",", ""))
    return d
a, b = load(sys.argv[1]), load(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 25
rows = sorted(((b.get(k, 0) - a.get(k, 0), k) for k in set(a) | set(b)), key=lambda r: -abs(r[0]))
print("total before %d after %d diff %+d" % (sum(a.values()), sum(b.values()), sum(b.values()) - sum(a.values())))
for dlt, k in rows[:n]:
    print("%+10d  %10d -> %10d  %s" % (dlt, a.get(k, 0), b.get(k, 0), k[:150]))
