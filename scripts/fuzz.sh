#!/usr/bin/env bash
# Fuzzes the parsers: scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   scripts/fuzz.sh 600              # every target, 10 minutes each
#   scripts/fuzz.sh 120 jwt text     # these two, 2 minutes each
#
# Installs cargo-fuzz when it is missing (crates.io), builds the targets of
# fuzz/ with the nightly toolchain, runs each for SECONDS, one after another,
# and prints one summary line per target: executions per second, corpus
# size, coverage, and crashes. A target stops at its first crash; its input
# is kept under fuzz/artifacts/TARGET/ and named in the summary (replay it
# with `cargo +nightly fuzz run TARGET FILE`). Exits non-zero when any
# target crashed.
#
# Inputs the fuzzer finds go to fuzz/corpus/TARGET/ (not committed) and are
# reused by the next run; the hand-written seeds in fuzz/seeds/TARGET/ are
# committed and read too. Full libFuzzer output: fuzz/logs/TARGET.log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

secs=${1:-60}
[ $# -gt 0 ] && shift
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "==> cargo +nightly fuzz build"
cargo +nightly fuzz build
mkdir -p fuzz/logs

# The longest input worth trying: past each parser's own limits.
max_len() {
    case $1 in
        http_head) echo 20000 ;; # MAX_HEAD_BYTES is 16 KiB
        text | frame) echo 10000 ;; # the runs' line and frame limit is 4 KiB
        *) echo 8192 ;;
    esac
}

failed=0
summaries=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    echo "==> $t for ${secs}s (log: $log)"
    status=0
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    # A crash in the first pass over the corpus comes before any of these.
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2 || true)
    files=$(ls "fuzz/corpus/$t" | wc -l)
    crashes=$(grep -c 'Test unit written to' "$log" || true)
    line="$t: ${rate:-?} execs/s, ${execs:-?} execs, corpus ${corp:-?} (${files} files in fuzz/corpus/$t), cov ${cov:-?}, crashes $crashes"
    if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        input=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
        line="$line, exit $status${input:+, input ${input#"$PWD/"}}"
    fi
    echo "$line"
    summaries+=("$line")
done

echo "==> summary (${secs}s per target)"
printf '%s\n' "${summaries[@]}"
exit $failed
