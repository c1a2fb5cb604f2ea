#!/usr/bin/env bash
# The one test command: unit, doc and integration tests (which start the
# example servers as child processes), then the WebSocket conformance run
# (Autobahn cases via kosoku against `echo` with two workers).
#
#   scripts/test.sh                  everything
#   scripts/test.sh --quick [ARGS]   `cargo test ARGS` only, no conformance run
#
# Idempotent; installs what it needs: redis-server for the cluster tests
# (scripts/setup-redis.sh, also with --quick), a RabbitMQ broker on
# 127.0.0.1:5672 for the bridge tests (scripts/setup-rabbitmq.sh, also with
# --quick), kosoku for the conformance run
# (scripts/setup-conformance.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=0
if [ "${1:-}" = "--quick" ]; then
    quick=1
    shift
fi

# The integration tests open a few thousand sockets at most; use what we may.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

timings=()
failed=()
step() {
    # Runs one step; a failure is remembered and the next steps still run,
    # so one run reports everything. The exit status says whether all passed.
    local name="$1"
    shift
    local start=$SECONDS status=0
    echo "==> $name"
    "$@" || status=$?
    local verdict="ok"
    if [ "$status" != 0 ]; then
        verdict="FAILED (exit $status)"
        failed+=("$name")
    fi
    timings+=("$(printf '%-24s %5ds  %s' "$name" $((SECONDS - start)) "$verdict")")
}

step "setup-redis" scripts/setup-redis.sh
step "setup-rabbitmq" scripts/setup-rabbitmq.sh
if [ "$quick" = 0 ]; then
    step "setup-conformance" scripts/setup-conformance.sh
fi
step "cargo test" cargo test --no-fail-fast "$@"
if [ "$quick" = 0 ] && [ -x "${FOREMAN_VENV:-$root/target/venv}/bin/kosoku" ]; then
    # Marked #[ignore] so a plain `cargo test` stays quick; run here on purpose.
    step "conformance (kosoku)" cargo test --test autobahn -- --ignored --nocapture --test-threads=1
elif [ "$quick" = 0 ]; then
    failed+=("conformance (kosoku not installed)")
fi

echo "==> summary"
printf '  %s\n' "${timings[@]}"
printf '  %-24s %5ds\n' "total" "$SECONDS"
if [ "${#failed[@]}" != 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all tests passed"
