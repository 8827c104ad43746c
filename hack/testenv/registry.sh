#!/usr/bin/env bash
# Starts crius's two test registries (Debian's docker-registry) on loopback:
#   127.0.0.1:5100  plain HTTP, no auth, deletes enabled
#   127.0.0.1:5101  plain HTTP, htpasswd auth (crius / crius-test), realm crius-test
# Installs what is missing first. Idempotent: a running instance is reused,
# never started twice (pid files, and the whole script runs under flock).
# State lives in ${CRIUS_TESTENV_DIR:-/var/lib/crius-testenv}; writes $DIR/env.
set -eu

DIR=${CRIUS_TESTENV_DIR:-/var/lib/crius-testenv}
PLAIN_ADDR=127.0.0.1:5100
AUTH_ADDR=127.0.0.1:5101
AUTH_USER=crius
AUTH_PASS=crius-test
AUTH_REALM=crius-test

log() { echo "testenv: $*" >&2; }

install_missing() {
  local missing="" p
  for p in docker-registry busybox-static zstd apache2-utils python3 curl; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  log "installing$missing"
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Keep the docker-registry package from starting its own service.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; } || rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" != 0 ]; then
    log "apt-get failed ($rc)"
    exit "$rc"
  fi
}

# http_code URL: the HTTP status of GET URL, 000 when nothing answers.
http_code() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# running NAME: true when the registry NAME started by this script is alive.
running() {
  local pidf="$DIR/$1/registry.pid" pid
  [ -s "$pidf" ] || return 1
  pid=$(cat "$pidf")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "docker-registry serve $DIR/$1/config.yml"
}

# write_config NAME ADDR [auth]: the registry config for instance NAME.
write_config() {
  local name=$1 addr=$2 auth=${3:-}
  mkdir -p "$DIR/$name/storage"
  {
    echo "version: 0.1"
    echo "log:"
    echo "  level: warn"
    echo "  accesslog:"
    echo "    disabled: true"
    echo "storage:"
    echo "  filesystem:"
    echo "    rootdirectory: $DIR/$name/storage"
    echo "  delete:"
    echo "    enabled: true"
    echo "http:"
    echo "  addr: $addr"
    echo "  secret: crius-testenv-$name"
    if [ -n "$auth" ]; then
      echo "auth:"
      echo "  htpasswd:"
      echo "    realm: $AUTH_REALM"
      echo "    path: $DIR/$name/htpasswd"
    fi
  } >"$DIR/$name/config.yml.new"
  mv "$DIR/$name/config.yml.new" "$DIR/$name/config.yml"
}

# start NAME ADDR WANT [auth]: start instance NAME unless it (or a registry
# answering WANT on ADDR) already runs, then wait for /v2/ to answer WANT.
start() {
  local name=$1 addr=$2 want=$3 auth=${4:-} code i
  if running "$name"; then
    log "$name registry already running on $addr (pid $(cat "$DIR/$name/registry.pid"))"
  else
    code=$(http_code "http://$addr/v2/")
    if [ "$code" = "$want" ]; then
      log "a registry already answers on $addr ($code); using it"
      return 0
    elif [ "$code" != 000 ]; then
      log "$addr is taken by something else (GET /v2/ -> $code)"
      exit 1
    fi
    write_config "$name" "$addr" "$auth"
    if [ -n "$auth" ]; then
      htpasswd -B -b -c "$DIR/$name/htpasswd" "$AUTH_USER" "$AUTH_PASS" 2>/dev/null
    fi
    log "starting $name registry on $addr"
    # No inherited descriptor (the lock on fd 9, a caller's pipes) may leak
    # into the long-lived registry.
    (
      for fd in $(ls /proc/$BASHPID/fd); do
        [ "$fd" -gt 2 ] && eval "exec $fd>&-"
      done
      exec setsid /usr/bin/docker-registry serve "$DIR/$name/config.yml" \
        </dev/null >>"$DIR/$name/registry.log" 2>&1
    ) &
    echo $! >"$DIR/$name/registry.pid"
  fi
  for i in $(seq 1 100); do
    code=$(http_code "http://$addr/v2/")
    [ "$code" = "$want" ] && return 0
    # The pid is the starting subshell until it execs the registry, so
    # only its disappearance means the registry exited.
    if ! kill -0 "$(cat "$DIR/$name/registry.pid")" 2>/dev/null; then
      log "$name registry exited; tail of $DIR/$name/registry.log:"
      tail -n 20 "$DIR/$name/registry.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "$name registry on $addr did not answer $want on /v2/ (last: $code)"
  exit 1
}

mkdir -p "$DIR"
exec 9>"$DIR/registry.lock"
flock 9
install_missing
start plain "$PLAIN_ADDR" 200
start auth "$AUTH_ADDR" 401 auth
{
  echo "CRIUS_TEST_REGISTRY=$PLAIN_ADDR"
  echo "CRIUS_TEST_AUTH_REGISTRY=$AUTH_ADDR"
  echo "CRIUS_TEST_AUTH_USER=$AUTH_USER"
  echo "CRIUS_TEST_AUTH_PASSWORD=$AUTH_PASS"
} >"$DIR/env.new"
mv "$DIR/env.new" "$DIR/env"
log "registries ready; env in $DIR/env"
