# shellcheck shell=bash disable=SC2034 # variables here are used by the scripts that source this
# Helpers shared by scripts/cluster.sh and scripts/bench.sh. Source it, don't run it.
#
# Everything here is plain bash + coreutils + the PostgreSQL binaries, so that the
# scripts work on a fresh Debian 12 machine, as root or as a normal user, without Docker.

# The repository root, whatever directory the caller is in.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# Git-ignored folder for everything the local cluster writes (data, logs, pid files).
LOCAL_DIR="$REPO_ROOT/.local"
LOG_DIR="$LOCAL_DIR/logs"

# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

# All progress goes to stderr so that commands whose stdout is consumed
# (`cluster.sh env`, for `eval`) stay clean.
info() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Prints the last lines of a log file, indented, to help explain a failure.
show_log_tail() {
	local file=$1 lines=${2:-20}
	if [[ -r $file ]]; then
		printf -- '--- last %s lines of %s ---\n' "$lines" "$file" >&2
		tail -n "$lines" "$file" | sed 's/^/    /' >&2
		printf -- '---\n' >&2
	fi
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# ---------------------------------------------------------------------------
# Steps (`make run`): one line per step with the time since the run began; the step's
# own output goes to a log file named on that line (V=1 shows it live as well).
# ---------------------------------------------------------------------------

STEPS_STARTED=${STEPS_STARTED:-$SECONDS}

# The time since the first step began, as m:ss.
elapsed() {
	local s=$((SECONDS - STEPS_STARTED))
	printf '%d:%02d' $((s / 60)) $((s % 60))
}

# step LOG DESCRIPTION CMD...: runs CMD with its output appended to LOG. While it runs
# longer than a minute, a line a minute says so with the log's last line; on failure the
# log's tail is shown and the script stops.
step() {
	local log=$1 what=$2
	shift 2
	mkdir -p "$(dirname "$log")"
	local began=$SECONDS rc=0 ticker=
	printf '[%s] %s (log: %s)\n' "$(elapsed)" "$what" "${log#"$REPO_ROOT"/}" >&2
	printf '\n=== %s: %s ===\n' "$(date -Is)" "$what" >>"$log"
	if [[ ${V:-0} == 1 ]]; then
		"$@" 2>&1 | tee -a "$log" >&2 || rc=$?
	else
		(
			while sleep 60; do
				last=$(tail -n 1 "$log" 2>/dev/null | cut -c1-100)
				printf '[%s]   ... still %s; last: %s\n' "$(elapsed)" "$what" "$last" >&2
			done
		) &
		ticker=$!
		"$@" >>"$log" 2>&1 || rc=$?
		kill "$ticker" 2>/dev/null || true
		wait "$ticker" 2>/dev/null || true
	fi
	if ((rc != 0)); then
		show_log_tail "$log" 30
		die "$what failed (exit $rc; whole log: $log)"
	fi
	printf '[%s]   done in %ss\n' "$(elapsed)" $((SECONDS - began)) >&2
}

# ---------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------

# True when something accepts TCP connections on host:port. bash's /dev/tcp needs
# no extra package; `timeout` keeps a filtered port from hanging us.
tcp_open() {
	local host=$1 port=$2
	# shellcheck disable=SC2016 # $0/$1 are expanded by the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# wait_until TIMEOUT_SECS DESCRIPTION CMD...: polls CMD every 0.5 s. Returns 1 on
# timeout; the caller prints the error, because only it knows which log to show.
wait_until() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			warn "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------

# Runs apt-get as root: directly when we are root, through sudo when it exists.
apt_install() {
	local sudo=()
	if ! is_root; then
		command -v sudo >/dev/null 2>&1 ||
			die "need to install: $* -- run as root: apt-get update && apt-get install -y $*"
		sudo=(sudo)
	fi
	command -v apt-get >/dev/null 2>&1 ||
		die "apt-get not found (this script expects Debian); install by hand: $*"
	# Debian's postgresql package creates and starts a default cluster on port 5432.
	# We run our own clusters, so ask postgresql-common not to (only before its first install).
	if [[ " $* " == *" postgresql "* && ! -e /etc/postgresql-common/createcluster.conf ]]; then
		"${sudo[@]}" mkdir -p /etc/postgresql-common
		echo 'create_main_cluster = false' | "${sudo[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
	fi
	info "installing Debian packages: $*"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 apt-get install -y -q \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		--no-install-recommends "$@"
}

# ---------------------------------------------------------------------------
# PostgreSQL binaries
# ---------------------------------------------------------------------------

# Prints the directory holding the PostgreSQL server binaries (initdb, pg_ctl, ...).
# Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH; take the highest major.
# /usr/local/bin symlinks are deliberately ignored: they may point anywhere.
pg_bindir() {
	local dir best=""
	for dir in /usr/lib/postgresql/*/bin; do
		[[ -x $dir/postgres && -x $dir/initdb && -x $dir/pg_ctl ]] && best+="$dir"$'\n'
	done
	if [[ -n $best ]]; then
		printf '%s' "$best" | sort -V | tail -n 1
		return 0
	fi
	if command -v pg_config >/dev/null 2>&1; then
		dir=$(pg_config --bindir 2>/dev/null || true)
		if [[ -n $dir && -x $dir/postgres && -x $dir/initdb && -x $dir/pg_ctl ]]; then
			printf '%s\n' "$dir"
			return 0
		fi
	fi
	return 1
}

# Sets PG_BIN, or fails with a hint.
require_pg_bin() {
	PG_BIN=$(pg_bindir) ||
		die "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/postgres); run: scripts/cluster.sh install"
}

# ---------------------------------------------------------------------------
# The service (scripts/run.sh, scripts/bench.sh)
# ---------------------------------------------------------------------------

SHARDWALLET_BIN=${SHARDWALLET_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/shardwallet}
SERVICE_URL=${SERVICE_URL:-http://127.0.0.1:8080}
READY_TIMEOUT=${READY_TIMEOUT:-90}

# service_ready PID LOG: dies (showing LOG's tail when there is one) if `serve` PID has
# exited; else true once SERVICE_URL/ready answers 200. For wait_until.
service_ready() {
	kill -0 "$1" 2>/dev/null || {
		[[ -z ${2:-} ]] || show_log_tail "$2" 30
		die "shardwallet serve exited during start-up${2:+ (log: $2)}"
	}
	curl -fsS -m 2 -o /dev/null "$SERVICE_URL/ready" 2>/dev/null
}

# ---------------------------------------------------------------------------
# nisshi (the Kafka-compatible broker)
# ---------------------------------------------------------------------------

NISSHI_VERSION=0.8.1
# The full nisshi command, installed only for BROKER_STORAGE=sqlite (libsql, which
# tools/broker leaves out): nisshi 0.8.1's own default storage engines, named so that a
# later default cannot add engines to the build unnoticed. Measured: 20.6 CPU-minutes
# (about 11 min on 2 idle cores, up to 25 on a busy one).
NISSHI_FEATURES=dynostore,libsql,postgres

# The broker the local cluster runs for memory:// and postgres:// storage: nisshi 0.8.1 as
# a library in this workspace (tools/broker, pinned by Cargo.lock), built by
# `cluster.sh install` with only those two storage engines.
BROKER_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/broker/shardwallet-broker

# Prints the broker binary for a storage kind (memory, postgres: ours; sqlite: the full
# nisshi command, whose libsql engine ours leaves out); fails when it is not built.
broker_bin() {
	case ${1:-memory} in
	sqlite) nisshi_bin ;;
	*) [[ -x $BROKER_BIN ]] && printf '%s\n' "$BROKER_BIN" ;;
	esac
}

# Prints the absolute path of the nisshi binary: on PATH, else in cargo's bin dir
# (which is not on PATH in non-login shells, e.g. CI or sudo).
nisshi_bin() {
	local p
	if p=$(command -v nisshi 2>/dev/null) && [[ -x $p ]]; then
		# command -v can print a relative path when PATH has relative entries.
		printf '%s\n' "$(cd "$(dirname "$p")" && pwd -P)/$(basename "$p")"
		return 0
	fi
	p="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
	if [[ -x $p ]]; then
		printf '%s\n' "$p"
		return 0
	fi
	return 1
}

# Prints the path of cargo, looking in rustup's default place too.
cargo_bin() {
	local p
	if p=$(command -v cargo 2>/dev/null); then
		printf '%s\n' "$p"
	elif [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
		printf '%s\n' "${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
	else
		return 1
	fi
}
