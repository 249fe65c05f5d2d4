#!/usr/bin/env bash
# Stops what scripts/dev-up.sh started (the Redis Cluster too), and a
# cachesync daemon whose pid is in .dev/cachesync.pid, using their pid files. Idempotent. Keeps the data in
# .dev/ (MariaDB's survives; Redis has none).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=$PWD/.dev

# alive PID: the process exists and is not a zombie.
alive() {
	kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# stop NAME PIDFILE [COMM]: send SIGTERM to the process in PIDFILE (if it is
# alive and, when COMM is given, named COMM), wait up to 60 s for it to exit,
# then SIGKILL it. Removes PIDFILE.
stop() {
	local name=$1 pidfile=$2 comm=${3:-} pid i
	[[ -s $pidfile ]] || return 0
	pid=$(<"$pidfile")
	if [[ ! $pid =~ ^[0-9]+$ ]] || ! alive "$pid" ||
		{ [[ -n $comm ]] && [[ $(</proc/"$pid"/comm) != "$comm" ]]; }; then
		rm -f "$pidfile"
		return 0
	fi
	kill -TERM "$pid"
	for ((i = 0; i < 600; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		echo "dev-down.sh: $name (pid $pid) still running 60 s after SIGTERM; killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
	echo "$name stopped (pid $pid)"
}

stop cachesync "$dev/cachesync.pid"
stop Kafka "$dev/kafka/devkafka.pid" devkafka
stop Redis "$dev/redis/redis.pid" redis-server
if [[ -d $dev/redis-cluster ]]; then
	scripts/redis-cluster.sh down "$dev/redis-cluster" "${CACHESYNC_DEV_REDIS_CLUSTER_PORT:-37001}"
fi
stop MariaDB "$dev/mariadb/mysqld.pid" mariadbd
