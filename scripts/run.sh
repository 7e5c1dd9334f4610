#!/usr/bin/env bash
# `make run`: installs what is missing, builds, brings the local cluster up, migrates and
# loads the test data, then starts the two mock payment gateways and `shardwallet serve`,
# prints where everything is once the service is ready, and stays in the foreground
# until Ctrl-C, which stops the service and the gateways.
#
# Each step prints one line with the time since the start and the log its output goes
# to (the build's: .local/logs/build.log); V=1 shows the output live as well.
#
# Environment: SHARDWALLET_BIN (default target/release/shardwallet), SERVICE_URL
# (default http://127.0.0.1:8080), READY_TIMEOUT (seconds, default 90), CARGO, V.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

BIN=$SHARDWALLET_BIN
MOCK_A=127.0.0.1:9101
MOCK_B=127.0.0.1:9102
RUN_LOG=$LOG_DIR/make-run.log
mkdir -p "$LOG_DIR"

# apt may ask for a sudo password: then the install step runs in the open.
if ! is_root && ! sudo -n true 2>/dev/null; then
	V=1 step "$LOG_DIR/install.log" "installing what is missing (Debian packages, the broker)" bash scripts/cluster.sh install
else
	step "$LOG_DIR/install.log" "installing what is missing (Debian packages, the broker)" bash scripts/cluster.sh install
fi
cargo=${CARGO:-$(cargo_bin)} || die "cargo not found; install Rust (rustup) first"
step "$LOG_DIR/build.log" "building shardwallet (cargo build --release)" "$cargo" build --release --locked
[[ -x $BIN ]] || die "$BIN not found after the build"
step "$RUN_LOG" "starting the PostgreSQL shards and the broker" bash scripts/cluster.sh up
step "$RUN_LOG" "migrating the shards" "$BIN" migrate
step "$RUN_LOG" "loading the test data" "$BIN" testdata

pids=()
stop() {
	((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf '[%s] starting the mock gateways (logs: %s)\n' "$(elapsed)" "${LOG_DIR#"$REPO_ROOT"/}/mock-gateway-{a,b}.log" >&2
"$BIN" mock-gateway --protocol json --listen "$MOCK_A" >>"$LOG_DIR/mock-gateway-a.log" 2>&1 &
pids+=($!)
"$BIN" mock-gateway --protocol xml --listen "$MOCK_B" >>"$LOG_DIR/mock-gateway-b.log" 2>&1 &
pids+=($!)
# The service logs to this terminal, as a foreground `serve` would.
printf '[%s] starting shardwallet serve (its log follows here)\n' "$(elapsed)" >&2
"$BIN" serve &
server=$!
pids+=("$server")

wait_until "$READY_TIMEOUT" "$SERVICE_URL/ready" service_ready "$server" || die "shardwallet serve is not ready after ${READY_TIMEOUT}s"

# alice is one of the users testdata/testdata.sql loads (with EUR funds).
token=$("$BIN" token --sub alice --ttl 24h)
cat >&2 <<EOF

================================================================================
 shardwallet is ready ($(elapsed) after make run began)
   API              $SERVICE_URL          (health: /health, readiness: /ready)
   Swagger UI       $SERVICE_URL/docs
   OpenAPI          $SERVICE_URL/openapi.json
   Metrics          $SERVICE_URL/metrics
   Mock gateways    gateway_a (JSON) http://$MOCK_A, gateway_b (XML) http://$MOCK_B
   Shards           postgres://shardwallet@127.0.0.1:5441-5443/shardwallet
   Broker           127.0.0.1:9092 (storage: $(cat "$LOCAL_DIR/nisshi.storage" 2>/dev/null || echo unknown))
   Logs             service here; gateways, broker, Postgres in $LOG_DIR

 A token for user alice (24 h; an admin one: $BIN token --sub ops --role admin):
   export TOKEN=$token

 Try a transfer:
   curl -s -X POST $SERVICE_URL/v1/transfers -H "Authorization: Bearer \$TOKEN" \\
     -H "Idempotency-Key: \$(date +%s%N)" -H 'Content-Type: application/json' \\
     -d '{"from_user_id":"alice","to_user_id":"bob","currency":"EUR","amount":"250"}'

 Ctrl-C stops the service and the mock gateways; 'make cluster-down' stops the rest.
================================================================================

EOF
wait "$server"
