#!/bin/sh
# A local scale-out cluster on loopback: a single-node Apache Kafka (broker and KRaft
# controller in one JVM, the jars scripts/kafka.sh fetches, set up the way tests/_kafka.py
# does) and a redis-server keeping an append-only file, plus a clew.toml that points Clew at
# both. `make cluster` runs `start`, `make cluster-stop` runs `stop` (docs/operations.md).
#
#   sh scripts/cluster.sh start|stop|status
#
# Everything lives in CLEW_CLUSTER_DIR (default ./.cluster): kafka/ and redis/ (data, logs,
# pid files), secrets (the privacy salt and master key, made once: the data keys in Redis are
# wrapped with them) and clew.toml (0600; it holds those secrets). Ports: CLEW_CLUSTER_KAFKA_PORT
# (9092), CLEW_CLUSTER_CONTROLLER_PORT (9093), CLEW_CLUSTER_REDIS_PORT (6379). A second `start`
# keeps the data and secrets; delete the directory (after `stop`) to start empty.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${CLEW_CLUSTER_DIR:-./.cluster}
kafka_port=${CLEW_CLUSTER_KAFKA_PORT:-9092}
controller_port=${CLEW_CLUSTER_CONTROLLER_PORT:-9093}
redis_port=${CLEW_CLUSTER_REDIS_PORT:-6379}
version=$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$here/kafka/pom.xml")
home=${CLEW_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/clew/kafka/$version}
python=$(command -v python3 || command -v python)

fail() {
    echo "cluster.sh: $1" >&2
    exit 1
}

# Whether something answers on 127.0.0.1:$1.
answers() {
    "$python" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" 2>/dev/null
}

wait_for() {  # port, name, log
    tries=0
    until answers "$1"; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            tail -n 30 "$3" >&2 || true
            fail "$2 did not answer on 127.0.0.1:$1 within 60 s (its log is $3)"
        fi
        sleep 0.2
    done
}

alive() {  # pid file
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_kafka() {
    [ -f "$home/.complete" ] || sh "$here/kafka.sh"
    [ -f "$home/.complete" ] || fail "Kafka's jars are not in $home: run sh scripts/kafka.sh (needs Maven and Java 17+)"
    command -v java >/dev/null || fail "Kafka needs Java 17 or newer: apt-get install openjdk-17-jre-headless"
    mkdir -p "$dir/kafka"
    if alive "$dir/kafka/pid"; then
        echo "cluster.sh: Kafka already runs (pid $(cat "$dir/kafka/pid"))" >&2
        return
    fi
    answers "$kafka_port" && fail "port $kafka_port is taken: set CLEW_CLUSTER_KAFKA_PORT"
    conf="$dir/kafka/server.properties"
    # One replica of everything (one broker), no topic created by accident, no wait before
    # the first group assignment: the settings of tests/_kafka.py.
    cat >"$conf" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$(cd "$dir/kafka" && pwd)/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    classpath="$home/libs/*"
    if [ ! -f "$dir/kafka/data/meta.properties" ]; then
        # Kafka's storage tool reads an id starting with "-" as an option: start with a letter.
        id=$("$python" -c "import base64,uuid; print('k' + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip('=')[1:])")
        java -cp "$classpath" kafka.tools.StorageTool format -t "$id" -c "$conf" \
            >"$dir/kafka/format.log" 2>&1 || { cat "$dir/kafka/format.log" >&2; fail "formatting Kafka's storage failed"; }
    fi
    nohup java -Xms256m -Xmx768m -cp "$classpath" kafka.Kafka "$conf" \
        >>"$dir/kafka/broker.log" 2>&1 </dev/null &
    echo $! >"$dir/kafka/pid"
    wait_for "$kafka_port" Kafka "$dir/kafka/broker.log"
}

start_redis() {
    command -v redis-server >/dev/null || fail "redis-server is not installed: run sh scripts/redis.sh (Debian: apt-get install -y redis-server)"
    mkdir -p "$dir/redis"
    if alive "$dir/redis/pid"; then
        echo "cluster.sh: Redis already runs (pid $(cat "$dir/redis/pid"))" >&2
        return
    fi
    answers "$redis_port" && fail "port $redis_port is taken: set CLEW_CLUSTER_REDIS_PORT"
    redis_dir=$(cd "$dir/redis" && pwd)
    # The append-only file is what Clew requires of the Redis holding its data keys.
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$redis_dir" \
        --appendonly yes --appendfsync everysec --save "" \
        --daemonize yes --pidfile "$redis_dir/pid" --logfile "$redis_dir/redis.log"
    wait_for "$redis_port" Redis "$redis_dir/redis.log"
}

write_settings() {
    if [ ! -f "$dir/secrets" ]; then
        (umask 077 && "$python" -c "import secrets; print(f'salt={secrets.token_hex(32)}\nmaster_key={secrets.token_hex(32)}')" >"$dir/secrets")
    fi
    salt=$(sed -n 's/^salt=//p' "$dir/secrets")
    master_key=$(sed -n 's/^master_key=//p' "$dir/secrets")
    (umask 077 && cat >"$dir/clew.toml" <<EOF
# Written by scripts/cluster.sh for the local cluster in $dir. Every role reads this file;
# give each "machine" a data directory of its own (--data-dir).

[log]
backend = "kafka"
bootstrap_servers = "127.0.0.1:$kafka_port"
replication_factor = 1
partitions = 4

[log.kafka_consumer]
"session.timeout.ms" = 10000

[store]
backend = "redis"
redis_url = "redis://127.0.0.1:$redis_port/0"
redis_prefix = "clew"

[privacy]
salt = "$salt"
master_key = "$master_key"
EOF
    )
}

start() {
    mkdir -p "$dir"
    chmod 700 "$dir"
    start_redis
    start_kafka
    write_settings
    config=$(cd "$dir" && pwd)/clew.toml
    cat <<EOF
Local cluster up:
  Kafka  127.0.0.1:$kafka_port (KRaft, one node; log $dir/kafka/broker.log)
  Redis  redis://127.0.0.1:$redis_port/0 (append-only file in $dir/redis)
  Settings: $config

Start the roles, one data directory per "machine" (docs/operations.md, "Start order"):
  C=$config
  clew sources create web --write-key "\$WEB_WRITE_KEY" --config \$C --data-dir $dir/lake-machine
  clew serve --port 8088 --config \$C --data-dir $dir/lake-machine
  clew sources create web --write-key "\$WEB_WRITE_KEY" --config \$C --data-dir $dir/machine-2
  clew collector --port 8081 --config \$C --data-dir $dir/machine-2
  clew worker --stage validate --stage profiles --config \$C --data-dir $dir/machine-2

Stop them, then the cluster: make cluster-stop
EOF
}

stop_pid() {  # pid file, name, seconds to wait
    if ! alive "$1"; then
        rm -f "$1"
        return
    fi
    pid=$(cat "$1")
    kill "$pid"
    tries=0
    while kill -0 "$pid" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt $(($3 * 5)) ]; then
            echo "cluster.sh: $2 did not stop in $3 s: killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$1"
    echo "cluster.sh: $2 stopped" >&2
}

stop() {
    stop_pid "$dir/kafka/pid" Kafka 60
    stop_pid "$dir/redis/pid" Redis 30
}

status() {
    for name in kafka redis; do
        if alive "$dir/$name/pid"; then
            echo "$name: running (pid $(cat "$dir/$name/pid"))"
        else
            echo "$name: stopped"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) fail "usage: sh scripts/cluster.sh start|stop|status" ;;
esac
