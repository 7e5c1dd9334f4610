#!/usr/bin/env bash
# Checks a running shardwallet from the outside, against the local cluster:
#   fuzz     Schemathesis (pinned, in a venv under .local/) generates requests from
#            /openapi.json and fails on any 5xx or any response that does not match
#            the document (status, content type, headers, body schema).
#   postman  newman (pinned, installed under .local/) runs apis.json, whose requests
#            carry test scripts with assertions.
#   all      both, against one service (newman first: fuzzing spends alice's money).
#
# The service is the debug binary `cargo test --all-targets` builds (target/debug/
# shardwallet; built when missing), on its own databases (sw_apichecks, dropped and
# re-created on every run, then loaded with testdata/testdata.sql), its own topics and a
# port of its own (API_CHECKS_PORT, 18080), and is stopped at the end. The cluster must
# be up (make fuzz / make postman bring it up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHAT=${1:-all}
case "$WHAT" in fuzz | postman | all) ;; *)
	echo "usage: $0 [fuzz|postman|all]" >&2
	exit 2
	;;
esac

SCHEMATHESIS_VERSION=4.32.5
NEWMAN_VERSION=6.2.2
PORT=${API_CHECKS_PORT:-18080}
BASE="http://127.0.0.1:$PORT"
BIN=${SHARDWALLET_BIN:-${CARGO_TARGET_DIR:-target}/debug/shardwallet}
# Schemathesis test cases per operation and phase.
FUZZ_EXAMPLES=${FUZZ_EXAMPLES:-50}
DIR=.local/api-checks
DB=sw_apichecks
mkdir -p "$DIR"

log() { printf '[api-checks] %s\n' "$*" >&2; }

# Debian packages the checks need when the machine lacks them (root or sudo).
apt_install() {
	local sudo=
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	log "installing $*"
	$sudo apt-get update -qq
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
# need COMMAND:PACKAGE...: installs the packages whose command is missing.
need() {
	local missing=()
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
	done
	((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}
need curl:curl psql:postgresql-client

# The debug build is brought up to date (a no-op when it is): never a stale binary checked.
# --all-targets: the binary `cargo test --all-targets` built, with the features the
# tests' dev-dependencies unify (a plain `cargo build` resolves others and rebuilt the
# dependencies: 3 min 18 s of `.ci/run` on 2 cores, for the same code).
if [[ -z ${SHARDWALLET_BIN:-} ]]; then
	log "building $BIN (if out of date)"
	${CARGO:-cargo} build --locked --all-targets
fi

# --- a service of our own --------------------------------------------------------
cat >"$DIR/shard-map.toml" <<MAP
buckets = 16384
[[shards]]
name = "shard-1"
url = "postgres://shardwallet@127.0.0.1:5441/$DB"
buckets = ["0-5460"]
[[shards]]
name = "shard-2"
url = "postgres://shardwallet@127.0.0.1:5442/$DB"
buckets = ["5461-10921"]
[[shards]]
name = "shard-3"
url = "postgres://shardwallet@127.0.0.1:5443/$DB"
buckets = ["10922-16383"]
MAP
cat >"$DIR/shardwallet.toml" <<CONF
[server]
# The mock gateways' shared secret is a known one.
profile = "dev"
listen = "127.0.0.1:$PORT"
shutdown_grace_secs = 5
[shards]
map_path = "$DIR/shard-map.toml"
pool_size = 8
[auth]
jwt_secret = "api-checks-$(date +%s%N)"
[kafka]
brokers = "127.0.0.1:9092"
topic_prefix = "apichecks.$(date +%s)."
group_id = "apichecks"
partitions = 3
message_key_id = "k1"
message_keys = { k1 = "api-checks-message-key-$(date +%s%N)" }
[transfers]
try_timeout_secs = 30
sweep_interval_secs = 1
[idempotency]
retention_hours = 24
[rate_limits]
# The checks send many requests as one caller; limits have tests of their own.
enabled = false
# The two mock gateways started below, so payments are processed for real.
[gateways.gateway_a]
protocol = "json"
base_url = "http://127.0.0.1:18101"
signing_secret = "mock-gateway-secret"
[gateways.gateway_b]
protocol = "xml"
base_url = "http://127.0.0.1:18102"
signing_secret = "mock-gateway-secret"
CONF
CONFIG=(--config "$DIR/shardwallet.toml")

for port in 5441 5442 5443; do
	psql -q -X -v ON_ERROR_STOP=1 "postgres://shardwallet@127.0.0.1:$port/postgres" \
		-c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
done
"$BIN" "${CONFIG[@]}" migrate >/dev/null
"$BIN" "${CONFIG[@]}" testdata >/dev/null

log "serving on $BASE (log: $DIR/serve.log)"
RUST_LOG=${RUST_LOG:-info} "$BIN" "${CONFIG[@]}" serve >"$DIR/serve.log" 2>&1 &
SERVER=$!
"$BIN" mock-gateway --protocol json --listen 127.0.0.1:18101 >"$DIR/mock-a.log" 2>&1 &
MOCK_A=$!
"$BIN" mock-gateway --protocol xml --listen 127.0.0.1:18102 >"$DIR/mock-b.log" 2>&1 &
MOCK_B=$!
stop() {
	kill -TERM "$SERVER" "$MOCK_A" "$MOCK_B" 2>/dev/null || true
	wait "$SERVER" "$MOCK_A" "$MOCK_B" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 1 120); do
	curl -fsS -m 2 "$BASE/ready" >/dev/null 2>&1 && break
	kill -0 "$SERVER" 2>/dev/null || {
		tail -20 "$DIR/serve.log" >&2
		exit 1
	}
	sleep 0.5
done
curl -fsS -m 2 "$BASE/ready" >/dev/null

ADMIN=$("$BIN" "${CONFIG[@]}" token --sub api-checks-admin --role admin)
USER=$("$BIN" "${CONFIG[@]}" token --sub alice)

# --- Schemathesis -----------------------------------------------------------------
fuzz() {
	local venv=.local/schemathesis-$SCHEMATHESIS_VERSION
	if [[ ! -x $venv/bin/schemathesis ]]; then
		log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
		need python3:python3
		python3 -m venv "$venv" 2>/dev/null || {
			apt_install python3-venv
			rm -rf "$venv"
			python3 -m venv "$venv"
		}
		"$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
	fi
	local checks=not_a_server_error,status_code_conformance,content_type_conformance
	checks+=,response_headers_conformance,response_schema_conformance
	# One worker: CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion
	# depth mismatch" inside Hypothesis), which breaks runs with several workers.
	local rc=0 who token
	for who in admin user; do
		if [[ $who == admin ]]; then token=$ADMIN; else token=$USER; fi
		log "schemathesis as $who: $FUZZ_EXAMPLES examples per operation"
		SCHEMATHESIS_HOOKS= "$venv/bin/schemathesis" run "$BASE/openapi.json" \
			--checks "$checks" \
			--phases examples,coverage,fuzzing \
			--max-examples "$FUZZ_EXAMPLES" \
			--seed 20261121 \
			--header "Authorization: Bearer $token" \
			--workers 1 \
			--request-timeout 10 \
			--no-color \
			--report junit --report-dir "$DIR/schemathesis-$who" || rc=1
	done
	return $rc
}

# --- newman -----------------------------------------------------------------------
postman() {
	local prefix=.local/newman-$NEWMAN_VERSION
	if [[ ! -x $prefix/node_modules/.bin/newman ]]; then
		log "installing newman $NEWMAN_VERSION into $prefix"
		need npm:npm
		mkdir -p "$prefix"
		(cd "$prefix" && npm install --no-audit --no-fund --silent "newman@$NEWMAN_VERSION")
	fi
	log "newman: apis.json"
	"$prefix/node_modules/.bin/newman" run apis.json \
		--env-var "baseUrl=$BASE" \
		--env-var "userToken=$USER" \
		--env-var "adminToken=$ADMIN" \
		--bail failure \
		--color off \
		--reporters cli
}

# newman first: its happy path expects the test data's balances, which fuzzing (as
# alice) spends.
rc=0
if [[ $WHAT == postman || $WHAT == all ]]; then postman || rc=1; fi
if [[ $WHAT == fuzz || $WHAT == all ]]; then fuzz || rc=1; fi
if ((rc)); then log "FAILED (service log: $DIR/serve.log)"; else log "all passed"; fi
exit $rc
