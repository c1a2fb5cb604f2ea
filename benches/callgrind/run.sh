#!/usr/bin/env bash
# One callgrind run: run.sh LABEL VERSION BIN SCHEME WORKLOAD [ARGS...]
#   VERSION: before|after|noapi (directory under $MEASURE_BINS), BIN: echo|broadcast,
#   SCHEME: websocket|frame. Starts the server under callgrind with count 1 on
#   a free loopback port, runs load.py WORKLOAD, stops it with SIGTERM
#   (graceful), waits, and prints the worker's and master's total Ir.
set -euo pipefail
bins=${MEASURE_BINS:-/work/wt/m-bin}   # holds before/, after/, noapi/ binaries
here=$(cd "$(dirname "$0")" && pwd)
label=$1 version=$2 bin=$3 scheme=$4 workload=$5
shift 5
dir=/tmp/mcg/$label
rm -rf "$dir"
mkdir -p "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --trace-children=no \
    --callgrind-out-file="$dir/cg.%p" \
    $bins/$version/$bin --listen "$scheme://127.0.0.1:$port" --count 1 \
    >"$dir/server.out" 2>"$dir/server.err" &
master=$!
python3 - "$port" <<'EOF'
import socket, sys, time
port = int(sys.argv[1])
deadline = time.time() + 120
while True:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("server not listening")
        time.sleep(0.05)
EOF
# The probe connection above is one extra accept, the same in every run.
start=$(date +%s.%N)
python3 "$here/load.py" "$workload" "$port" "$@" >"$dir/load.out"
end=$(date +%s.%N)
kill -TERM "$master"
wait "$master" || true
worker=""
for f in "$dir"/cg.*; do
    pid=${f##*.}
    if [ "$pid" != "$master" ]; then worker=$f; fi
done
wir=$(grep -E '^(summary|totals):' "$worker" | head -1 | awk '{print $2}')
mir=$(grep -E '^(summary|totals):' "$dir/cg.$master" | head -1 | awk '{print $2}')
printf '%s\t%s\t%s\t%s\tworker_Ir=%s\tmaster_Ir=%s\tload_s=%.1f\t%s\n' \
    "$label" "$version" "$bin" "$workload $*" "$wir" "$mir" \
    "$(echo "$end - $start" | bc)" "$(cat "$dir/load.out")"
