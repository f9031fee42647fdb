#!/usr/bin/env bash
# Stop the kube-apiserver and etcd started by kube-up.sh.
#   kube-down.sh          stop both processes (etcd data is kept: next kube-up.sh is fast and keeps objects)
#   kube-down.sh --clean  also wipe etcd data (etcd-data/ and etcd-data-go/) and the remembered ports
#                         (binaries, Go module cache, PKI are kept)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${KAS_DIR:-$ROOT/target/kube-apiserver}

clean=no
for a in "$@"; do
    case $a in
        --clean) clean=yes ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { printf '[kube-apiserver/down] %s\n' "$*" >&2; }

# stop PIDFILE NAME: stop the pid if it is still our NAME process: SIGTERM, and
# if it is still there after 5 s a second SIGTERM (kube-apiserver sometimes
# lingers ~30 s after "apiserver is exiting"; a second signal makes it exit at
# once), SIGKILL 2 s later. All state is in etcd, so this loses nothing.
stop() {
    local f=$1 name=$2 pid exe
    [[ -s $f ]] || return 0
    pid=$(<"$f")
    if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]]; then
        exe=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)
        if [[ $exe == *"/$name" || $exe == "$name" ]]; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
            if [[ -e /proc/$pid ]]; then
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 20); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
            fi
            if [[ -e /proc/$pid ]]; then
                log "$name (pid $pid) still running 7s after SIGTERM: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                for _ in $(seq 20); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
            fi
        fi
    fi
    rm -f "$f"
}

stop "$DIR/kube-apiserver.pid" kube-apiserver
stop "$DIR/etcd.pid" etcd

if [[ $clean == yes ]]; then
    log "wiping etcd data in $DIR/etcd-data $DIR/etcd-data-go"
    rm -rf "$DIR/etcd-data" "$DIR/etcd-data-go" "$DIR/ports.env"
fi
