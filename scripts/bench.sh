#!/usr/bin/env bash
# Benchmark run used by `make bench` (which has already brought the cluster up, built,
# migrated and loaded the test data):
#   1. start `shardwallet serve` in the background (log: .local/logs/bench-serve.log),
#   2. wait until GET /ready answers 200,
#   3. run `shardwallet bench "$@"` with the server's pid (for its CPU time; the broker's
#      comes from .local/nisshi.pid) and the JSON figures in $BENCH_JSON, then the
#      reshard phase (`bench --mode reshard`), then `shardwallet verify`,
#   4. stop the server, whatever happened (trap).
#
# Environment: SERVICE_URL (default http://127.0.0.1:8080), READY_TIMEOUT (seconds, 90),
#              SHARDWALLET_BIN (default target/release/shardwallet),
#              BENCH_JSON (default .local/bench.json), BENCH_RESHARD (1: also run the
#              reshard phase; 0: skip it), BENCH_RESHARD_ARGS (default "--reshard-batch 16 --reshard-buckets 512").
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

BIN=$SHARDWALLET_BIN
SERVE_LOG="$LOG_DIR/bench-serve.log"
BENCH_JSON=${BENCH_JSON:-$LOCAL_DIR/bench.json}
BENCH_RESHARD_ARGS=${BENCH_RESHARD_ARGS:---reshard-batch 16 --reshard-buckets 512}
SERVER_PID=""

[[ -x $BIN ]] || die "$BIN not found; run 'make build' first"
# `bench` may compare against plain pgbench; Debian keeps it off PATH.
if PG_BIN=$(pg_bindir); then export PATH="$PG_BIN:$PATH"; fi

stop_server() {
	[[ -n $SERVER_PID ]] || return 0
	if kill -0 "$SERVER_PID" 2>/dev/null; then
		info "stopping shardwallet serve (pid $SERVER_PID)"
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		# The server drains for up to server.shutdown_grace_secs (20 s by default).
		# shellcheck disable=SC2016 # $0 is expanded by the inner bash
		if ! wait_until 40 "shardwallet serve to exit" bash -c '! kill -0 "$0" 2>/dev/null' "$SERVER_PID"; then
			warn "shardwallet serve ignored SIGTERM; killing it"
			kill -KILL "$SERVER_PID" 2>/dev/null || true
		fi
	fi
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
}

main() {
	# A server we did not start would be benchmarked and then left running.
	if curl -sS -m 2 -o /dev/null "$SERVICE_URL/health" 2>/dev/null; then
		die "something already answers on $SERVICE_URL (a 'make run'?); stop it first"
	fi

	mkdir -p "$LOG_DIR"
	trap stop_server EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	printf '\n=== %s: shardwallet serve for make bench ===\n' "$(date -Is)" >>"$SERVE_LOG"
	info "starting shardwallet serve (log: $SERVE_LOG)"
	"$BIN" serve </dev/null >>"$SERVE_LOG" 2>&1 &
	SERVER_PID=$!

	if ! wait_until "$READY_TIMEOUT" "$SERVICE_URL/ready" service_ready "$SERVER_PID" "$SERVE_LOG"; then
		curl -sS -m 2 "$SERVICE_URL/ready" >&2 || true
		echo >&2
		show_log_tail "$SERVE_LOG" 30
		die "shardwallet serve is not ready after ${READY_TIMEOUT}s (log: $SERVE_LOG)"
	fi
	info "server ready; running: shardwallet bench --url $SERVICE_URL --service-pid $SERVER_PID --json $BENCH_JSON $*"
	"$BIN" bench --url "$SERVICE_URL" --service-pid "$SERVER_PID" --json "$BENCH_JSON" "$@"

	# The reshard phase: the same load before and while buckets move onto an extra shard
	# (a database on shard-1's server) and back. BENCH_RESHARD=0 skips it.
	if [[ ${BENCH_RESHARD:-1} != 0 ]]; then
		info "running: shardwallet bench --mode reshard $BENCH_RESHARD_ARGS"
		# shellcheck disable=SC2086 # the arguments are meant to split
		"$BIN" bench --url "$SERVICE_URL" --service-pid "$SERVER_PID" --mode reshard --no-pgbench $BENCH_RESHARD_ARGS
	fi

	info "running: shardwallet verify"
	"$BIN" verify
	info "verify: ok"
}

main "$@"
