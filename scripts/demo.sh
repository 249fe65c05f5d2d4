#!/usr/bin/env bash
# Loads the demo schema into the dev MariaDB and starts the daemon in the
# background (log in .dev/cachesync.log), then prints commands to try.
# The admin token is CACHESYNC_ADMIN_TOKEN when set (32 bytes at least),
# else the one in .dev/admin-token, generated on first use; the buyers' JWT
# secret likewise CACHESYNC_JWT_SECRET or .dev/jwt-secret.
set -euo pipefail
cd "$(dirname "$0")/.."
mysql_port=${CACHESYNC_DEV_MYSQL_PORT:-33306}
redis_port=${CACHESYNC_DEV_REDIS_PORT:-36379}
kafka_port=${CACHESYNC_DEV_KAFKA_PORT:-39092}
mysql=(mariadb -h127.0.0.1 -P"$mysql_port" -uroot)
# The daemon's configuration, and how it finds Redis: on the dev Redis
# Cluster (make run REDIS_MODE=cluster), the same file with redis.mode
# cluster and the six nodes as seeds.
config=configs/cachesync.yaml
redis_env=(CACHESYNC_REDIS_ADDR=127.0.0.1:$redis_port)
redis_cli="redis-cli -p $redis_port"
channel=cachesync:invalidations
if [[ ${CACHESYNC_DEV_REDIS_MODE:-standalone} == cluster ]]; then
	cluster_port=${CACHESYNC_DEV_REDIS_CLUSTER_PORT:-37001}
	mkdir -p .dev
	config=.dev/cachesync-cluster.yaml
	seeds=
	for p in $(seq "$cluster_port" $((cluster_port + 5))); do seeds+=${seeds:+, }127.0.0.1:$p; done
	sed "s/^  addr: 127.0.0.1:36379\$/  mode: cluster\n  addrs: [$seeds]/" configs/cachesync.yaml >"$config"
	grep -q '^  mode: cluster$' "$config" || { echo "demo.sh: configs/cachesync.yaml has no redis addr line to replace" >&2; exit 1; }
	redis_env=()
	redis_cli="redis-cli -c -p $cluster_port"
fi
"${mysql[@]}" < configs/demo.sql
# Flash sale: its tables and one item with 5 units.
"${mysql[@]}" shop < seckill/schema.sql
"${mysql[@]}" -e "INSERT IGNORE INTO shop.sk_items (id, name, stock) VALUES (100, 'flash-sale phone', 5)"
# Public listener (the sale, goods) and admin listener (metrics, readyz,
# /admin), as configs/cachesync.yaml sets them.
api=http://127.0.0.1:9090
admin=http://127.0.0.1:9091
mkdir -p .dev
# secret VAR FILE FROM EXPR: $VAR from the environment, else from FILE,
# made once (32 random bytes, mode 600) so restarts keep it; sets FROM and
# EXPR to where it came from and how a shell reads it, for the
# instructions below. Never a fixed value: anyone who read this script
# would know it.
secret() {
	local var=$1 file=$2
	if [[ -n ${!var:-} ]]; then
		printf -v "$3" '%s' "$var"
		printf -v "$4" '$%s' "$var"
	else
		[[ -s $file ]] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
		printf -v "$var" '%s' "$(<"$file")"
		printf -v "$3" '%s' "$file"
		printf -v "$4" '$(<%s)' "$file"
	fi
	export "${var?}"
}
# The admin token, and the HMAC secret that signs the buyers' tokens
# (seckill.auth.jwt).
secret CACHESYNC_ADMIN_TOKEN .dev/admin-token token_from token_expr
secret CACHESYNC_JWT_SECRET .dev/jwt-secret jwt_from jwt_expr
if [[ -s .dev/cachesync.pid ]] && kill -0 "$(<.dev/cachesync.pid)" 2>/dev/null; then
	echo "cachesync already running (pid $(<.dev/cachesync.pid)); restarting it"
	kill "$(<.dev/cachesync.pid)" || true
	sleep 1
fi
env CACHESYNC_MYSQL_ADDR=127.0.0.1:$mysql_port ${redis_env[@]+"${redis_env[@]}"} \
	CACHESYNC_KAFKA_BROKERS=127.0.0.1:$kafka_port \
	nohup bin/cachesync run -config "$config" >.dev/cachesync.log 2>&1 &
echo $! >.dev/cachesync.pid
ready=
for _ in $(seq 300); do
	# Ready and the CDC writer: a standby is ready too (the lease of a
	# daemon killed just before lasts ha.lease_ttl).
	if curl -fs "$admin/readyz" 2>/dev/null | grep -q '"cdc":"leader"'; then ready=1; break; fi
	if ! kill -0 "$(<.dev/cachesync.pid)" 2>/dev/null; then
		echo "cachesync exited; its log:" >&2; cat .dev/cachesync.log >&2; exit 1
	fi
	sleep 0.1
done
if [[ -z $ready ]]; then
	echo "cachesync did not become ready in 30 s; its log:" >&2; cat .dev/cachesync.log >&2
	curl -s "$admin/readyz" >&2 || true
	exit 1
fi
# The sale's item takes reservations once the jobs role has built its Redis
# keys from MySQL (a second or two after start); until then it answers 503.
item_ready=
for _ in $(seq 300); do
	if curl -fs "$api/seckill/items/100" >/dev/null 2>&1; then item_ready=1; break; fi
	sleep 0.1
done
if [[ -z $item_ready ]]; then
	echo "warning: flash-sale item 100 is not ready after 30 s (reservations answer 503); see .dev/cachesync.log" >&2
fi
# A token for test user 1, to show the command works with this secret.
bin/cachesync token -config configs/cachesync.yaml -user 1 >/dev/null
cat <<MSG

cachesync is running (pid $(<.dev/cachesync.pid), log .dev/cachesync.log).
  public API:      $api   (goods, the sale)
  admin listener:  $admin   ($admin/metrics, $admin/readyz, $admin/debug/pprof/, /admin/*)
  admin token:     from $token_from; send it as  -H "Authorization: Bearer $token_expr"
                   (to choose it: export CACHESYNC_ADMIN_TOKEN=<32+ random bytes> before make run)
  buyers:          the sale identifies buyers by a JWT (HS256, secret from $jwt_from);
                   mint one for test user N, valid for an hour (-ttl to change):
                     bin/cachesync token -config $config -user N
                   and send it as  -H "Authorization: Bearer <token>"

Try it (in this shell first:  export CACHESYNC_JWT_SECRET=$jwt_expr CACHESYNC_ADMIN_TOKEN=$token_expr
        -- the commands below load $config, which needs the secret):
  # 1. watch the invalidation channel (in another terminal)
  $redis_cli SUBSCRIBE $channel

  # 2. change a row in MariaDB
  ${mysql[*]} -e "UPDATE shop.t_goods SET stock = stock - 1, price = 379.00 WHERE goodsId = 1"

  # 3. read what cachesync wrote
  $redis_cli GET goods:json:1
  $redis_cli GET goods:stock:1
  $redis_cli SMEMBERS goods:on_sale

  # 4. read through the two-level cache (X-Cache says L1, L2 or DB)
  curl -si $api/goods/1

  # 5. flash sale: item 100 has 5 units. Tokens for users 1 and 2; user 1
  #    reserves one (202 + order id), again (409); no token (401)
  T1=\$(bin/cachesync token -config $config -user 1)
  T2=\$(bin/cachesync token -config $config -user 2)
  curl -s -XPOST $api/seckill/items/100/reservations -H "Authorization: Bearer \$T1"
  curl -s -XPOST $api/seckill/items/100/reservations -H "Authorization: Bearer \$T1"
  curl -si -XPOST $api/seckill/items/100/reservations
  curl -s $api/seckill/items/100
  #    the order, as its owner (queued → created) and as user 2 (404), then pay
  curl -s $api/orders/ORDER_ID -H "Authorization: Bearer \$T1"
  curl -s $api/orders/ORDER_ID -H "Authorization: Bearer \$T2"
  curl -s -XPOST $api/orders/ORDER_ID/pay -H "Authorization: Bearer \$T1"

  # 6. admin (admin listener, bearer token): restock item 100 in MySQL
  curl -s -XPOST $admin/admin/items/100/restock -H "Authorization: Bearer \$CACHESYNC_ADMIN_TOKEN" \\
       -H 'Content-Type: application/json' -d '{"add":10}'
  bin/cachesync check  -config $config # Redis vs MySQL, exit 1 on drift
  bin/cachesync resync -config $config -item 100

Stop everything with: make stop
MSG
