#!/usr/bin/env bash
# Makes a RabbitMQ broker answer on 127.0.0.1:5672 (guest/guest) for the
# bridge tests (tests/amqp_bridge.rs): the machine's own broker when one
# answers there already; else Debian's rabbitmq-server, installed when it
# is missing, and started as the machine's broker (bound to 127.0.0.1
# only). The tests that stop or kill a broker start a private one of their
# own (tests/common/rabbit.rs) with this same package and never touch this
# one. Safe to run again: it does nothing once the broker answers.
set -euo pipefail

answers() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

if answers; then
    echo "setup-rabbitmq: a broker answers on 127.0.0.1:5672" >&2
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

if ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-rabbitmq: rabbitmq-server not found and no apt-get; install RabbitMQ yourself" >&2
        exit 1
    fi
    echo "setup-rabbitmq: installing rabbitmq-server" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi

# Loopback only: the broker (and its Erlang distribution and epmd) never
# listens on another address.
env_file=/etc/rabbitmq/rabbitmq-env.conf
if ! grep -q '^NODE_IP_ADDRESS=127.0.0.1' "$env_file" 2>/dev/null; then
    $sudo mkdir -p /etc/rabbitmq
    printf '%s\n' 'NODENAME=rabbit@localhost' 'NODE_IP_ADDRESS=127.0.0.1' \
        'ERL_EPMD_ADDRESS=127.0.0.1' \
        'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' |
        $sudo tee "$env_file" >/dev/null
fi

echo "setup-rabbitmq: starting rabbitmq-server" >&2
if command -v service >/dev/null 2>&1 && $sudo service rabbitmq-server start >/dev/null 2>&1; then
    :
else
    # No init system (a container): run it detached, as its own user.
    $sudo mkdir -p /var/log/rabbitmq /var/lib/rabbitmq
    $sudo chown rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq 2>/dev/null || true
    $sudo setsid /usr/sbin/rabbitmq-server </dev/null >/dev/null 2>&1 &
fi

for _ in $(seq 1 240); do
    if answers; then
        echo "setup-rabbitmq: the broker answers on 127.0.0.1:5672" >&2
        exit 0
    fi
    sleep 0.5
done
echo "setup-rabbitmq: rabbitmq-server did not answer on 127.0.0.1:5672 within 120 s" >&2
tail -n 30 /var/log/rabbitmq/*.log 2>/dev/null >&2 || true
exit 1
