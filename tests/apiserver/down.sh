#!/usr/bin/env bash
# Stop the test apiserver and etcd started by up.sh.
#   down.sh          stop both processes (etcd data is kept: next up.sh is fast and keeps objects)
#   down.sh --clean  also wipe etcd data and the remembered ports (binary, Go module cache, PKI are kept)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${APISERVER_DIR:-$ROOT/target/apiserver}

clean=no
for a in "$@"; do
    case $a in
        --clean) clean=yes ;;
        -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { printf '[apiserver/down] %s\n' "$*" >&2; }

# stop PIDFILE NAME: TERM the pid if it is still our NAME process, KILL after 10s
stop() {
    local f=$1 name=$2 pid exe
    [[ -s $f ]] || return 0
    pid=$(<"$f")
    if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]]; then
        exe=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)
        if [[ $exe == *"$name" ]]; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
            if [[ -e /proc/$pid ]]; then
                log "$name (pid $pid) still running after 10s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    fi
    rm -f "$f"
}

stop "$DIR/apiserver.pid" apiextensions-apiserver
stop "$DIR/etcd.pid" etcd

if [[ $clean == yes ]]; then
    log "wiping etcd data in $DIR/etcd-data"
    rm -rf "$DIR/etcd-data" "$DIR/ports.env"
fi
