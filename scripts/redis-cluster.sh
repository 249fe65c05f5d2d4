#!/usr/bin/env bash
# A private Redis Cluster for development: 3 masters and 3 replicas of
# Debian's redis-server, without persistence, like internal/testenv's
# StartRedisCluster.
#
#   scripts/redis-cluster.sh up DIR PORT     start it, unless it runs
#   scripts/redis-cluster.sh down DIR PORT   stop it
#
# The nodes listen on 127.0.0.1:PORT to PORT+5, their cluster bus on
# PORT+10000 to PORT+10005; node PORT keeps its nodes.conf, log and pid file
# in DIR/PORT. The first `up` joins them with redis-cli --cluster create;
# later ones start the stopped nodes, which rejoin with their nodes.conf
# (empty: nothing is persisted). `up` waits until every node says
# cluster_state:ok with the 16384 slots served. Remove DIR to start over.
# scripts/dev-up.sh calls it for `make run REDIS_MODE=cluster`.
set -euo pipefail

usage() {
	echo "usage: $0 up|down DIR PORT" >&2
	exit 2
}
[[ $# == 3 ]] || usage
cmd=$1 dir=$2 base=$3
[[ $base =~ ^[0-9]+$ ]] && ((base >= 1024 && base + 10005 <= 65535)) || {
	echo "redis-cluster.sh: PORT $base: want 1024..55530 (the buses are PORT+10000..PORT+10005)" >&2
	exit 2
}
ports=()
for ((i = 0; i < 6; i++)); do
	ports+=($((base + i)))
done

# alive PIDFILE: the redis-server in PIDFILE runs.
alive() {
	local pid
	[[ -s $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/stat ]] || return 1
	[[ $(</proc/"$pid"/comm) == redis-server ]] && [[ $(awk '{print $3}' "/proc/$pid/stat") != Z ]]
}

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# info PORT FIELD: FIELD of CLUSTER INFO on node PORT.
info() {
	redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

# healthy: every node says cluster_state:ok with 16384 slots ok.
healthy() {
	local p
	for p in "${ports[@]}"; do
		[[ $(info "$p" cluster_state) == ok && $(info "$p" cluster_slots_ok) == 16384 ]] || return 1
	done
}

# start_node PORT: start node PORT unless it runs, and wait for its PING.
start_node() {
	local p=$1 d=$dir/$1 i
	if alive "$d/redis.pid"; then
		return 0
	fi
	for q in "$p" $((p + 10000)); do
		if port_busy "$q"; then
			echo "redis-cluster.sh: port $q is taken by another process; choose another PORT" >&2
			return 1
		fi
	done
	mkdir -p "$d"
	rm -f "$d/redis.pid"
	redis-server --bind 127.0.0.1 --port "$p" --dir "$d" --save "" --appendonly no \
		--cluster-enabled yes --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 2000 \
		--repl-diskless-sync yes --repl-diskless-sync-delay 0 \
		--daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log"
	for ((i = 0; i < 600; i++)); do
		[[ $(redis-cli -h 127.0.0.1 -p "$p" ping 2>/dev/null) == PONG ]] && return 0
		sleep 0.1
	done
	echo "redis-cluster.sh: node $p did not answer within 60 s; end of $d/redis.log:" >&2
	tail -n 20 "$d/redis.log" >&2 || true
	return 1
}

up() {
	local p i addrs=()
	for p in "${ports[@]}"; do
		start_node "$p"
		addrs+=("127.0.0.1:$p")
	done
	if [[ $(info "$base" cluster_slots_assigned) == 0 ]]; then
		if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/cluster-create.log" 2>&1; then
			echo "redis-cluster.sh: redis-cli --cluster create failed; $dir/cluster-create.log:" >&2
			cat "$dir/cluster-create.log" >&2
			return 1
		fi
	fi
	for ((i = 0; i < 600; i++)); do
		healthy && return 0
		sleep 0.1
	done
	echo "redis-cluster.sh: the cluster is not ok after 60 s (remove $dir to start over):" >&2
	redis-cli -h 127.0.0.1 -p "$base" cluster nodes >&2 || true
	return 1
}

down() {
	local p pid i
	for p in "${ports[@]}"; do
		alive "$dir/$p/redis.pid" || continue
		pid=$(<"$dir/$p/redis.pid")
		kill -TERM "$pid"
		for ((i = 0; i < 600; i++)); do
			alive "$dir/$p/redis.pid" || break
			sleep 0.1
		done
		if alive "$dir/$p/redis.pid"; then
			echo "redis-cluster.sh: node $p (pid $pid) still running 60 s after SIGTERM; killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
			rm -f "$dir/$p/redis.pid"
		fi
		echo "Redis Cluster node $p stopped (pid $pid)"
	done
}

case $cmd in
up) up ;;
down) down ;;
*) usage ;;
esac
