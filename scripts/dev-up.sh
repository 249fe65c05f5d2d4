#!/usr/bin/env bash
# Starts a private MariaDB (ROW binlog), a private Redis and a Kafka-protocol
# broker for development, unless they are already running, and waits until
# all three answer.
#
#   MariaDB: 127.0.0.1:${CACHESYNC_DEV_MYSQL_PORT:-33306}, user root, no
#            password; data, binlogs, logs and pid file in .dev/mariadb
#   Redis:   127.0.0.1:${CACHESYNC_DEV_REDIS_PORT:-36379}, no persistence;
#            log and pid file in .dev/redis
#            With CACHESYNC_DEV_REDIS_MODE=cluster (make run REDIS_MODE=cluster)
#            a Redis Cluster of 3 masters and 3 replicas instead, on
#            127.0.0.1:${CACHESYNC_DEV_REDIS_CLUSTER_PORT:-37001} and the five
#            ports above it, in .dev/redis-cluster (scripts/redis-cluster.sh)
#   Kafka:   127.0.0.1:${CACHESYNC_DEV_KAFKA_PORT:-39092}, cmd/devkafka (an
#            in-process kfake broker, built into bin/devkafka); topics
#            cachesync.orders (8 partitions) and cachesync.orders.dlq (1);
#            data in .dev/kafka/data, log and pid file in .dev/kafka
#
# Stop them with scripts/dev-down.sh. Remove .dev/ to start from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

mysql_port=${CACHESYNC_DEV_MYSQL_PORT:-33306}
redis_port=${CACHESYNC_DEV_REDIS_PORT:-36379}
redis_mode=${CACHESYNC_DEV_REDIS_MODE:-standalone}
cluster_port=${CACHESYNC_DEV_REDIS_CLUSTER_PORT:-37001}
case $redis_mode in
standalone | cluster) ;;
*)
	echo "dev-up.sh: CACHESYNC_DEV_REDIS_MODE (REDIS_MODE) $redis_mode: want standalone or cluster" >&2
	exit 1
	;;
esac
kafka_port=${CACHESYNC_DEV_KAFKA_PORT:-39092}
dev=$PWD/.dev
mdata=$dev/mariadb
rdir=$dev/redis
kdir=$dev/kafka

scripts/deps.sh

# bin NAME: the path of NAME, on PATH or in /usr/sbin.
bin() {
	command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"
}

# running PIDFILE COMM: the process in PIDFILE is alive and is named COMM.
running() {
	local pid state
	[[ -s $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/stat ]] || return 1
	[[ $(</proc/"$pid"/comm) == "$2" ]] || return 1
	state=$(awk '{print $3}' "/proc/$pid/stat")
	[[ $state != Z ]]
}

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_for WHAT PID LOG CMD...: run CMD until it succeeds (60 s at most),
# failing early if process PID exits. On failure, show the end of LOG.
wait_for() {
	local what=$1 pid=$2 log=$3
	shift 3
	local i
	for ((i = 0; i < 600; i++)); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
			echo "dev-up.sh: $what exited while starting; end of $log:" >&2
			tail -n 20 "$log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	echo "dev-up.sh: $what did not answer within 60 s; end of $log:" >&2
	tail -n 20 "$log" >&2 || true
	return 1
}

mysql_ping() {
	mariadb --no-defaults -h127.0.0.1 -P"$mysql_port" -uroot -e 'select 1'
}

redis_ping() {
	[[ $(redis-cli -h 127.0.0.1 -p "$redis_port" ping) == PONG ]]
}

# kafka_ready LINES: devkafka logged "ready" (after creating its topics) past
# the first LINES lines of its log, and accepts connections.
kafka_ready() {
	tail -n "+$(($1 + 1))" "$kdir/devkafka.log" | grep -q '"message":"ready"' && port_busy "$kafka_port"
}

# MariaDB
if running "$mdata/mysqld.pid" mariadbd; then
	echo "MariaDB already running (pid $(<"$mdata/mysqld.pid"))"
else
	if port_busy "$mysql_port"; then
		echo "dev-up.sh: port $mysql_port is taken by another process; set CACHESYNC_DEV_MYSQL_PORT" >&2
		exit 1
	fi
	if [[ ! -d $mdata/mysql ]]; then
		echo "Initializing $mdata"
		mkdir -p "$mdata"
		user=()
		if ((EUID == 0)); then
			user=(--user=root)
		fi
		if ! "$(bin mariadb-install-db)" --no-defaults "${user[@]}" --datadir="$mdata" \
			--auth-root-authentication-method=normal --skip-test-db >"$dev/mariadb-install.log" 2>&1; then
			echo "dev-up.sh: mariadb-install-db failed; end of $dev/mariadb-install.log:" >&2
			tail -n 20 "$dev/mariadb-install.log" >&2
			rm -rf "$mdata"
			exit 1
		fi
	fi
	user=()
	if ((EUID == 0)); then
		user=(--user=root)
	fi
	nohup setsid "$(bin mariadbd)" --no-defaults "${user[@]}" \
		--datadir="$mdata" \
		--bind-address=127.0.0.1 \
		--port="$mysql_port" \
		--socket="$mdata/mysqld.sock" \
		--pid-file="$mdata/mysqld.pid" \
		--log-error="$mdata/error.log" \
		--log-bin="$mdata/binlog" \
		--binlog-format=ROW \
		--binlog-row-image=FULL \
		--binlog-row-metadata=FULL \
		--server-id=1 \
		--skip-name-resolve \
		--innodb-buffer-pool-size=128M \
		--innodb-flush-log-at-trx-commit=2 \
		--sync-binlog=0 \
		--max-connections=500 \
		</dev/null >>"$mdata/mariadbd.out" 2>&1 &
	wait_for MariaDB $! "$mdata/error.log" mysql_ping
	echo "MariaDB started (pid $(<"$mdata/mysqld.pid"))"
fi

# Redis
if [[ $redis_mode == cluster ]]; then
	scripts/redis-cluster.sh up "$dev/redis-cluster" "$cluster_port"
	echo "Redis Cluster running on 127.0.0.1:$cluster_port-$((cluster_port + 5))"
elif running "$rdir/redis.pid" redis-server; then
	echo "Redis already running (pid $(<"$rdir/redis.pid"))"
else
	if port_busy "$redis_port"; then
		echo "dev-up.sh: port $redis_port is taken by another process; set CACHESYNC_DEV_REDIS_PORT" >&2
		exit 1
	fi
	mkdir -p "$rdir"
	rm -f "$rdir/redis.pid"
	redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$rdir" \
		--save "" --appendonly no \
		--daemonize yes --pidfile "$rdir/redis.pid" --logfile "$rdir/redis.log"
	for ((i = 0; i < 50; i++)); do
		[[ -s $rdir/redis.pid ]] && break
		sleep 0.1
	done
	if [[ ! -s $rdir/redis.pid ]]; then
		echo "dev-up.sh: redis-server wrote no pid file; end of $rdir/redis.log:" >&2
		tail -n 20 "$rdir/redis.log" >&2 || true
		exit 1
	fi
	wait_for Redis "$(<"$rdir/redis.pid")" "$rdir/redis.log" redis_ping
	echo "Redis started (pid $(<"$rdir/redis.pid"))"
fi

# Kafka
if running "$kdir/devkafka.pid" devkafka; then
	echo "Kafka already running (pid $(<"$kdir/devkafka.pid"))"
else
	if port_busy "$kafka_port"; then
		echo "dev-up.sh: port $kafka_port is taken by another process; set CACHESYNC_DEV_KAFKA_PORT" >&2
		exit 1
	fi
	mkdir -p "$kdir/data" bin
	"${GO:-go}" build -o bin/devkafka ./cmd/devkafka
	touch "$kdir/devkafka.log"
	lines=$(wc -l <"$kdir/devkafka.log")
	nohup setsid bin/devkafka -addr "127.0.0.1:$kafka_port" -data-dir "$kdir/data" \
		-topic cachesync.orders:8 -topic cachesync.orders.dlq:1 \
		</dev/null >>"$kdir/devkafka.log" 2>&1 &
	echo $! >"$kdir/devkafka.pid"
	wait_for Kafka $! "$kdir/devkafka.log" kafka_ready "$lines"
	echo "Kafka started (pid $(<"$kdir/devkafka.pid"))"
fi

echo "MariaDB: root@tcp(127.0.0.1:$mysql_port)/   (mariadb --no-defaults -h127.0.0.1 -P$mysql_port -uroot)"
if [[ $redis_mode == cluster ]]; then
	echo "Redis:   cluster, 127.0.0.1:$cluster_port-$((cluster_port + 5))   (redis-cli -c -p $cluster_port)"
else
	echo "Redis:   127.0.0.1:$redis_port   (redis-cli -p $redis_port)"
fi
echo "Kafka:   127.0.0.1:$kafka_port   (topics cachesync.orders, cachesync.orders.dlq)"
