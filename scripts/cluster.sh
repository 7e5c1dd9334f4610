#!/usr/bin/env bash
# Local infrastructure for shardwallet, without Docker:
#   - three PostgreSQL instances ("shard-1..3") on 127.0.0.1:5441-5443,
#     superuser role `shardwallet`, trust auth for 127.0.0.1 only;
#     database `shardwallet` on each, plus `nisshi` and `pgbench` on 5441;
#   - the Kafka-compatible broker nisshi (Tansu) 0.8.1 on 127.0.0.1:9092: the library
#     built into tools/broker (`target/broker/shardwallet-broker`, memory and postgres
#     storage), or for BROKER_STORAGE=sqlite the full `nisshi` command from crates.io.
#
# Usage: scripts/cluster.sh COMMAND [COMMAND...]     (run in order, e.g. `install up`)
#   install   install missing Debian packages (postgresql, curl, build tools) and build
#             the broker (cargo build -p shardwallet-broker; `nisshi` for sqlite)
#   up        start whatever is not running yet; reuse whatever already is
#   down      stop the Postgres instances and the broker this script started
#   broker-restart  stop the broker this script started and start it again with
#             BROKER_STORAGE (to switch storage), leaving Postgres as it is
#   status    show what runs; exit 0 only when every shard and the broker answer
#   add-shard start one more PostgreSQL server on the next port (5444, ...), kept by
#             up/down/status from then on; prints "NAME URL" (`make shard-add` uses it)
#   env       print `export ...` lines for the test suite (eval "$(scripts/cluster.sh env)")
#
# Environment:
#   BROKER_STORAGE=memory|sqlite|postgres|none   broker storage for `up` (default memory);
#                                         `none` starts Postgres only
#   NISSHI_REBALANCE_DELAY                the broker's group.initial.rebalance.delay
#                                         (default 100ms: consumer groups in tests form fast)
#   NISSHI_EXTRA_ARGS                     extra arguments for the broker
#   BROKER_RUST_LOG                       the broker's RUST_LOG (the caller's RUST_LOG is not
#                                         passed on: it would log every span at info)
#   PG_START_TIMEOUT, BROKER_START_TIMEOUT  seconds (default 60 each)
#
# Data lives under .local/ (git-ignored): .local/pg/shard-N, logs in .local/logs/.
# initdb refuses to run as root, so as root the servers run as the `postgres` system
# user; if that user cannot reach the repository, the data goes to
# /var/tmp/shardwallet-<hash of repo path>/ instead (printed when used).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The three shards every cluster starts with (and the test suite uses)...
readonly BASE_SHARD_NAMES=(shard-1 shard-2 shard-3)
readonly BASE_SHARD_PORTS=(5441 5442 5443)
# ...and those `add-shard` started since (`make shard-add`), one "name port" per line.
readonly ADDED_SHARDS_FILE="$LOCAL_DIR/added-shards"
SHARD_NAMES=("${BASE_SHARD_NAMES[@]}")
SHARD_PORTS=("${BASE_SHARD_PORTS[@]}")
if [[ -s $ADDED_SHARDS_FILE ]]; then
	while read -r added_name added_port; do
		[[ -n $added_name && -n $added_port ]] || continue
		SHARD_NAMES+=("$added_name")
		SHARD_PORTS+=("$added_port")
	done <"$ADDED_SHARDS_FILE"
fi
readonly PG_HOST=127.0.0.1
readonly PG_ROLE=shardwallet
readonly BROKER_HOST=127.0.0.1
readonly BROKER_PORT=9092
readonly BROKER_PID_FILE="$LOCAL_DIR/nisshi.pid"
readonly BROKER_STORAGE_FILE="$LOCAL_DIR/nisshi.storage"
readonly BROKER_LOG="$LOG_DIR/nisshi.log"
PG_START_TIMEOUT=${PG_START_TIMEOUT:-60}
BROKER_START_TIMEOUT=${BROKER_START_TIMEOUT:-60}

# ---------------------------------------------------------------------------
# Where the Postgres data goes, and as whom the servers run
# ---------------------------------------------------------------------------

PG_ROOT=""    # parent of the data dirs shard-1..3
PG_LOG_DIR="" # where the server logs go (must be writable by RUN_AS)
RUN_AS=""     # system user running initdb/pg_ctl; empty = the current user

# Decides PG_ROOT, PG_LOG_DIR and RUN_AS. Creates nothing, so `status` and `env`
# have no side effects; `up` calls prepare_pg_dirs afterwards.
plan_pg_layout() {
	[[ -n $PG_ROOT ]] && return 0
	PG_ROOT="$LOCAL_DIR/pg"
	PG_LOG_DIR="$LOG_DIR"
	is_root || return 0

	id -u postgres >/dev/null 2>&1 ||
		die "running as root, but there is no 'postgres' system user to run the servers as (it comes with Debian's postgresql package: scripts/cluster.sh install)"
	RUN_AS=postgres
	# The postgres user must be able to traverse every directory down to the repo.
	if ! (cd / && runuser -u postgres -- test -x "$REPO_ROOT"); then
		local hash
		hash=$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)
		PG_ROOT="/var/tmp/shardwallet-$hash/pg"
		PG_LOG_DIR="/var/tmp/shardwallet-$hash/logs"
	fi
}

prepare_pg_dirs() {
	plan_pg_layout
	mkdir -p "$LOG_DIR" "$PG_ROOT" "$PG_LOG_DIR"
	if [[ -n $RUN_AS ]]; then
		if [[ $PG_ROOT != "$LOCAL_DIR/pg" ]]; then
			info "the 'postgres' user cannot reach $REPO_ROOT; Postgres data goes to $PG_ROOT, logs to $PG_LOG_DIR"
			chmod 755 "$(dirname "$PG_ROOT")"
		else
			chmod 755 "$LOCAL_DIR"
		fi
		# Traversable by the postgres user; the data dirs themselves stay 0700.
		# The server logs are created by us and chowned one by one (see start_shard),
		# so the log dir can stay ours.
		chmod 755 "$PG_ROOT" "$PG_LOG_DIR"
	fi
}

# Runs a command as the user that owns the Postgres data dirs. From / because
# pg_ctl and initdb fail when they cannot read the current directory.
as_pg() {
	if [[ -n $RUN_AS ]]; then
		(cd / && runuser -u "$RUN_AS" -- "$@")
	else
		"$@"
	fi
}

# Writes stdin to a file inside a data dir, owned by the server's user.
write_pg_file() {
	local path=$1
	cat >"$path"
	if [[ -n $RUN_AS ]]; then chown "$RUN_AS": "$path"; fi
	chmod 600 "$path"
}

data_dir() { printf '%s/%s\n' "$PG_ROOT" "$1"; }
pg_log() { printf '%s/%s.log\n' "$PG_LOG_DIR" "$1"; }

# Closes inherited descriptors above stderr in the current (sub)shell. Called in a
# subshell before starting a long-lived server, so that a pipe held open by a caller
# (CI capturing output, make's jobserver) is not kept open by the server after the
# caller exits.
close_extra_fds() {
	local fd
	for fd in /proc/self/fd/*; do
		fd=${fd##*/}
		if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
	done
}

# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------

# pg_isready: 0 = accepting, 1 = starting/rejecting, 2 = no answer.
pg_state() {
	local rc=0
	"$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$1" -U "$PG_ROLE" -d postgres -t 2 || rc=$?
	return "$rc"
}
pg_accepting() { pg_state "$1"; }

psql_at() {
	local port=$1 db=$2
	shift 2
	"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$port" -U "$PG_ROLE" -d "$db" "$@"
}

init_shard() {
	local name=$1 dir
	dir=$(data_dir "$name")
	if [[ -s $dir/PG_VERSION ]]; then
		check_owner "$dir"
		return 0
	fi
	if [[ -d $dir && -n $(ls -A "$dir") ]]; then
		die "$dir exists but is not a PostgreSQL data directory; remove it to re-create $name"
	fi
	mkdir -p "$dir"
	chmod 700 "$dir"
	if [[ -n $RUN_AS ]]; then chown "$RUN_AS": "$dir"; fi

	info "$name: initdb in $dir"
	local log
	log="$LOG_DIR/initdb-$name.log"
	if ! as_pg "$PG_BIN/initdb" -D "$dir" -U "$PG_ROLE" --auth=trust -E UTF8 --no-locale >"$log" 2>&1; then
		show_log_tail "$log"
		die "initdb failed for $name (full log: $log)"
	fi
	# Only TCP from 127.0.0.1: the servers have no Unix socket (see write_pg_conf).
	write_pg_file "$dir/pg_hba.conf" <<-'EOF'
		# Written by scripts/cluster.sh: local development cluster, trust on loopback only.
		# TYPE  DATABASE     USER  ADDRESS        METHOD
		host    all          all   127.0.0.1/32   trust
		host    replication  all   127.0.0.1/32   trust
	EOF
	printf "\n# Added by scripts/cluster.sh; the settings live in shardwallet.conf.\ninclude_if_exists = 'shardwallet.conf'\n" >>"$dir/postgresql.conf"
}

# A data dir made by a root run belongs to `postgres`; a normal user cannot start
# it (and vice versa). Say so rather than let pg_ctl fail obscurely.
check_owner() {
	local dir=$1 owner want
	owner=$(stat -c %U "$dir")
	want=${RUN_AS:-$(id -un)}
	[[ $owner == "$want" ]] ||
		die "$dir belongs to user '$owner' but the server would run as '$want'; run this script as $([[ $owner == postgres ]] && echo root || echo "$owner"), or stop the cluster and remove $PG_ROOT"
}

# Rewritten on every `up`, so a changed setting here reaches existing clusters at
# their next start.
write_pg_conf() {
	local name=$1 port=$2 dir
	dir=$(data_dir "$name")
	write_pg_file "$dir/shardwallet.conf" <<-EOF
		# Written by scripts/cluster.sh on every 'up'; local edits are overwritten.
		port = $port
		listen_addresses = '127.0.0.1'
		# No Unix socket: clients use TCP on 127.0.0.1, pg_ctl -w watches postmaster.pid,
		# and a socket path inside a deep checkout could exceed the 107-byte limit.
		unix_socket_directories = ''
		max_connections = 500
		shared_buffers = 128MB
	EOF
}

start_shard() {
	local name=$1 port=$2 rc=0 dir log
	pg_state "$port" || rc=$?
	if ((rc == 0)); then
		psql_at "$port" postgres -tAc 'select 1' >/dev/null 2>&1 ||
			die "a PostgreSQL server already answers on $PG_HOST:$port but does not accept role '$PG_ROLE' without a password; stop it or free the port"
		info "$name: already running on $PG_HOST:$port (reused)"
		return 0
	fi

	init_shard "$name"
	write_pg_conf "$name" "$port"
	dir=$(data_dir "$name")
	log=$(pg_log "$name")
	touch "$log"
	if [[ -n $RUN_AS ]]; then chown "$RUN_AS": "$log"; fi

	info "$name: starting on $PG_HOST:$port (log: $log)"
	if ! (close_extra_fds && as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$log" -w -t "$PG_START_TIMEOUT" start >&2); then
		show_log_tail "$log"
		die "$name did not start (log: $log); is port $port taken by another program?"
	fi
	if ! wait_until "$PG_START_TIMEOUT" "$name to accept connections on $port" pg_accepting "$port"; then
		show_log_tail "$log"
		die "$name started but does not accept connections on $PG_HOST:$port (log: $log)"
	fi
}

ensure_database() {
	local port=$1 db=$2 exists
	exists=$(psql_at "$port" postgres -tAc "select 1 from pg_database where datname = '$db'")
	if [[ $exists != 1 ]]; then
		info "creating database $db on $PG_HOST:$port"
		"$PG_BIN/createdb" -h "$PG_HOST" -p "$port" -U "$PG_ROLE" "$db"
	fi
}

pg_up() {
	require_pg_bin
	prepare_pg_dirs
	local i
	for i in "${!SHARD_NAMES[@]}"; do
		start_shard "${SHARD_NAMES[$i]}" "${SHARD_PORTS[$i]}"
		ensure_database "${SHARD_PORTS[$i]}" shardwallet
	done
	# The broker's durable storage and the benchmark's baseline live on shard-1's server.
	ensure_database "${SHARD_PORTS[0]}" nisshi
	ensure_database "${SHARD_PORTS[0]}" pgbench
}

# True when the data dir has a live postmaster (pg_ctl status reads postmaster.pid).
pg_running() {
	local dir=$1
	[[ -f $dir/postmaster.pid ]] || return 1
	as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1
}

pg_down() {
	require_pg_bin
	plan_pg_layout
	local i name port dir
	for i in "${!SHARD_NAMES[@]}"; do
		name=${SHARD_NAMES[$i]}
		port=${SHARD_PORTS[$i]}
		dir=$(data_dir "$name")
		if [[ -s $dir/PG_VERSION ]] && pg_running "$dir"; then
			info "$name: stopping"
			as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >&2 ||
				die "$name did not stop (log: $(pg_log "$name"))"
		elif pg_accepting "$port"; then
			warn "$name: something else serves $PG_HOST:$port (not $dir); left alone"
		else
			info "$name: not running"
		fi
	done
}

# ---------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------

broker_answers() { tcp_open "$BROKER_HOST" "$BROKER_PORT"; }

# The pid from our pid file, if that process is still a nisshi.
broker_pid() {
	local pid
	[[ -r $BROKER_PID_FILE ]] || return 1
	pid=$(<"$BROKER_PID_FILE")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	grep -qaE 'nisshi|shardwallet-broker' "/proc/$pid/cmdline" 2>/dev/null || return 1
	printf '%s\n' "$pid"
}

broker_up() {
	local storage=${BROKER_STORAGE:-memory} url bin pid
	[[ $storage == none ]] && {
		info "broker: skipped (BROKER_STORAGE=none)"
		return 0
	}
	if broker_answers; then
		local running="unknown storage (not started by this script)"
		if broker_pid >/dev/null && [[ -r $BROKER_STORAGE_FILE ]]; then running="storage=$(<"$BROKER_STORAGE_FILE")"; fi
		info "broker: already answers on $BROKER_HOST:$BROKER_PORT, $running (reused as it is)"
		return 0
	fi
	case $storage in
	memory) url="memory://nisshi/" ;;
	# nisshi reads the path after sqlite:// relative to its working directory.
	sqlite) url="sqlite://$(realpath --relative-to=. "$LOCAL_DIR/nisshi.db")" ;;
	postgres) url="postgres://$PG_ROLE@$PG_HOST:${SHARD_PORTS[0]}/nisshi" ;;
	*) die "BROKER_STORAGE must be memory, sqlite, postgres or none (got '$storage')" ;;
	esac
	bin=$(broker_bin "$storage") ||
		die "broker: not built for storage=$storage (looked for $([[ $storage == sqlite ]] && echo "nisshi on PATH and in ${CARGO_HOME:-$HOME/.cargo}/bin" || echo "$BROKER_BIN")). Postgres is up; build the broker with 'scripts/cluster.sh install', then run 'scripts/cluster.sh up' again"

	mkdir -p "$LOG_DIR"
	info "broker: starting $bin with storage=$storage (log: $BROKER_LOG)"
	printf '\n=== %s: %s broker, storage %s ===\n' "$(date -Is)" "$bin" "$url" >>"$BROKER_LOG"
	# setsid: its own session, so a Ctrl-C in the terminal that ran `make run` or the
	# end of a CI step does not take the broker down with it.
	# shellcheck disable=SC2086 # NISSHI_EXTRA_ARGS is a list of words on purpose
	# The broker's log level is its own (BROKER_RUST_LOG), not the RUST_LOG of the shell
	# that started the cluster: `RUST_LOG=info make bench` would make it log every span
	# and take a core.
	(close_extra_fds && exec setsid nohup env -u RUST_LOG ${BROKER_RUST_LOG:+"RUST_LOG=$BROKER_RUST_LOG"} "$bin" broker \
		--listener-url "tcp://$BROKER_HOST:$BROKER_PORT" \
		--advertised-listener-url "tcp://$BROKER_HOST:$BROKER_PORT" \
		--storage-engine "$url" \
		--group-initial-rebalance-delay "${NISSHI_REBALANCE_DELAY:-100ms}" --silent ${NISSHI_EXTRA_ARGS:-} \
		</dev/null >>"$BROKER_LOG" 2>&1) &
	pid=$!
	echo "$pid" >"$BROKER_PID_FILE"
	echo "$storage" >"$BROKER_STORAGE_FILE"

	local deadline=$((SECONDS + BROKER_START_TIMEOUT))
	until broker_answers; do
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$BROKER_PID_FILE"
			show_log_tail "$BROKER_LOG"
			die "broker: nisshi exited during start-up (log: $BROKER_LOG)"
		fi
		if ((SECONDS >= deadline)); then
			# Don't leave a half-started broker holding the port for the next attempt.
			broker_down >/dev/null 2>&1 || true
			show_log_tail "$BROKER_LOG"
			die "broker: nisshi (pid $pid) did not accept connections on $BROKER_HOST:$BROKER_PORT within ${BROKER_START_TIMEOUT}s; stopped it (log: $BROKER_LOG)"
		fi
		sleep 0.5
	done
	info "broker: up on $BROKER_HOST:$BROKER_PORT (pid $pid)"
}

broker_down() {
	local pid
	if ! pid=$(broker_pid); then
		rm -f "$BROKER_PID_FILE"
		if broker_answers; then
			warn "broker: something answers on $BROKER_HOST:$BROKER_PORT but was not started by this script; left alone"
		else
			info "broker: not running"
		fi
		return 0
	fi
	info "broker: stopping (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	# shellcheck disable=SC2016 # $0 is expanded by the inner bash
	if ! wait_until 20 "nisshi (pid $pid) to exit" bash -c '! kill -0 "$0" 2>/dev/null' "$pid"; then
		warn "broker: nisshi ignored SIGTERM; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$BROKER_PID_FILE"
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

cmd_install() {
	local pkgs=()
	pg_bindir >/dev/null || pkgs+=(postgresql)
	command -v curl >/dev/null 2>&1 || pkgs+=(curl)
	# nisshi and shardwallet (librdkafka, aws-lc) compile C code.
	{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || pkgs+=(build-essential)
	# librdkafka is built with OpenSSL (TLS and SASL/SCRAM towards the broker).
	{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } || pkgs+=(libssl-dev pkg-config)
	if ((${#pkgs[@]})); then
		apt_install "${pkgs[@]}"
	else
		info "Debian packages: already installed"
	fi

	local bin cargo
	cargo=$(cargo_bin) || die "cargo not found; install Rust (rustup) first"
	if [[ ${BROKER_STORAGE:-memory} == sqlite ]]; then
		install_nisshi "$cargo"
		return 0
	fi
	# A no-op (about a second) once built; pinned by Cargo.lock. rama, a dependency of
	# nisshi-broker, declares Rust 1.96 but builds with older compilers.
	info "broker: cargo build -p shardwallet-broker --profile broker (tools/broker; the first build takes a few minutes)"
	"$cargo" build -p shardwallet-broker --profile broker --locked --ignore-rust-version \
		--manifest-path "$REPO_ROOT/Cargo.toml"
	bin=$(broker_bin memory) || die "the broker build finished but $BROKER_BIN is missing"
	info "broker: $bin"
}

# The full nisshi command from crates.io (BROKER_STORAGE=sqlite only).
install_nisshi() {
	local cargo=$1 bin
	if bin=$(nisshi_bin); then
		info "nisshi: already installed at $bin"
		return 0
	fi
	info "nisshi: installing $NISSHI_VERSION (features $NISSHI_FEATURES) from crates.io for sqlite storage (about 11 minutes on 2 idle cores, once per machine)"
	"$cargo" install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
		--no-default-features --features "$NISSHI_FEATURES"
	bin=$(nisshi_bin) || die "cargo install finished but nisshi is not in ${CARGO_HOME:-$HOME/.cargo}/bin"
	info "nisshi: installed at $bin"
}

# Starts one more PostgreSQL server on the next port (5444, 5445, ...) the way `up`
# starts the first three, records it for `up`, `down` and `status`, and prints
# "NAME URL" for `shardwallet shards add --name NAME --url URL`.
cmd_add_shard() {
	require_pg_bin
	prepare_pg_dirs
	local n=${#SHARD_NAMES[@]} last=${SHARD_PORTS[-1]}
	local name="shard-$((n + 1))" port=$((last + 1))
	start_shard "$name" "$port"
	ensure_database "$port" shardwallet
	mkdir -p "$(dirname "$ADDED_SHARDS_FILE")"
	printf '%s %s\n' "$name" "$port" >>"$ADDED_SHARDS_FILE"
	SHARD_NAMES+=("$name")
	SHARD_PORTS+=("$port")
	printf '%s postgres://%s@%s:%s/shardwallet\n' "$name" "$PG_ROLE" "$PG_HOST" "$port"
}

cmd_up() {
	pg_up
	broker_up
	info "cluster is up (scripts/cluster.sh status)"
}

cmd_down() {
	broker_down
	pg_down
}

cmd_status() {
	require_pg_bin
	plan_pg_layout
	local i name port dir rc=0 state pid bin
	for i in "${!SHARD_NAMES[@]}"; do
		name=${SHARD_NAMES[$i]}
		port=${SHARD_PORTS[$i]}
		dir=$(data_dir "$name")
		if pg_accepting "$port"; then state=up; else
			state=down
			rc=1
		fi
		printf '%-8s %s:%-5s %-5s data=%s log=%s\n' "$name" "$PG_HOST" "$port" "$state" "$dir" "$(pg_log "$name")"
	done
	if broker_answers; then
		state=up
		if pid=$(broker_pid); then
			state+=" pid=$pid storage=$(cat "$BROKER_STORAGE_FILE" 2>/dev/null || echo '?')"
		else
			state+=" (not started by this script)"
		fi
	else
		state=down
		rc=1
	fi
	bin=$(broker_bin "${BROKER_STORAGE:-memory}") || bin="not built (scripts/cluster.sh install)"
	printf '%-8s %s:%-5s %s log=%s\n' broker "$BROKER_HOST" "$BROKER_PORT" "$state" "$BROKER_LOG"
	printf '%-8s %s\n' binary "$bin"
	return "$rc"
}

# Prints `export NAME="value"`, escaping what is special inside double quotes.
print_export() {
	local value=$2
	value=${value//\\/\\\\}
	value=${value//\"/\\\"}
	value=${value//\$/\\\$}
	value=${value//\`/\\\`}
	printf 'export %s="%s"\n' "$1" "$value"
}

cmd_env() {
	local urls=() port bin
	for port in "${BASE_SHARD_PORTS[@]}"; do urls+=("postgres://$PG_ROLE@$PG_HOST:$port/postgres"); done
	print_export SHARDWALLET_TEST_PG "$(
		IFS=,
		echo "${urls[*]}"
	)"
	print_export SHARDWALLET_TEST_KAFKA "$BROKER_HOST:$BROKER_PORT"
	# The tests' own broker keeps its data in PostgreSQL, which ours serves.
	if bin=$(broker_bin postgres); then
		print_export SHARDWALLET_TEST_NISSHI "$bin"
	else
		warn "the broker is not built; SHARDWALLET_TEST_NISSHI is not set (scripts/cluster.sh install)"
	fi
}

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

main() {
	(($#)) || {
		usage >&2
		exit 2
	}
	local cmd
	for cmd in "$@"; do
		case $cmd in
		install) cmd_install ;;
		up) cmd_up ;;
		down) cmd_down ;;
		broker-restart)
			broker_down
			broker_up
			;;
		status) cmd_status ;;
		add-shard) cmd_add_shard ;;
		env) cmd_env ;;
		-h | --help | help) usage ;;
		*)
			usage >&2
			die "unknown command '$cmd'"
			;;
		esac
	done
}

main "$@"
