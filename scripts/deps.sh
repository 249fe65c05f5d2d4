#!/usr/bin/env bash
# Installs the Debian packages that the integration tests and scripts/dev-up.sh
# need (MariaDB and Redis servers and clients), but only if one of their
# binaries is missing. Idempotent; prints nothing when everything is present.
# Also prometheus (prometheus and promtool, for the alert-rule tests in
# deploy/), without its recommended node exporter and with its system
# service stopped: tests start their own server.
# Uses sudo unless run as root. "deps.sh bench" also installs wrk (HTTP load
# generator used by the benchmarks) and curl.
set -euo pipefail

# have NAME: NAME is on PATH or in /usr/sbin or /usr/bin (Debian puts mariadbd
# in /usr/sbin, which is not on every user's PATH).
have() {
	command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]] || [[ -x "/usr/bin/$1" ]]
}

pkgs=()
if ! have mariadbd || ! have mariadb-install-db; then
	pkgs+=(mariadb-server)
fi
if ! have mariadb; then
	pkgs+=(mariadb-client)
fi
if ! have redis-server; then
	pkgs+=(redis-server)
fi
if ! have redis-cli; then
	pkgs+=(redis-tools)
fi
if ! have curl; then
	pkgs+=(curl)
fi
if [[ ${1:-} == bench ]] && ! have wrk; then
	pkgs+=(wrk)
fi
norec=()
if ! have prometheus || ! have promtool; then
	norec+=(prometheus)
fi
if ((${#pkgs[@]} + ${#norec[@]} == 0)); then
	exit 0
fi

sudo=()
if ((EUID != 0)); then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "deps.sh: need root to install ${pkgs[*]}, and sudo is missing" >&2
		exit 1
	fi
	sudo=(sudo)
fi

echo "deps.sh: installing ${pkgs[*]} ${norec[*]}" >&2
"${sudo[@]}" apt-get update -qq
if ((${#pkgs[@]} > 0)); then
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
if ((${#norec[@]} > 0)); then
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${norec[@]}" >/dev/null
	# Where systemd runs, the package enables and starts prometheus.service.
	if [[ -d /run/systemd/system ]]; then
		"${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
	fi
fi

for bin in mariadbd mariadb-install-db mariadb redis-server redis-cli prometheus promtool; do
	if ! have "$bin"; then
		echo "deps.sh: $bin still missing after installing ${pkgs[*]} ${norec[*]}" >&2
		exit 1
	fi
done
