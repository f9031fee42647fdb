#!/usr/bin/env bash
# Bring up a real kube-apiserver (Kubernetes 1.34, built from Go modules) + etcd
# on loopback for tests. It serves the full built-in API: core/v1 (Namespaces, ConfigMaps, Events, ...),
# coordination.k8s.io Leases, events.k8s.io Events, RBAC, admissionregistration
# (ValidatingAdmissionPolicy is enforced), CRDs, discovery (/api, /apis).
# No controller-manager runs (see README: namespace deletion, GC, default
# ServiceAccounts, aggregated ClusterRoles).
# Idempotent: if it is already up and ready, it only prints the kubeconfig path.
#
# stdout: exactly one line, the kubeconfig path (so KUBECONFIG=$(kube-up.sh) works).
# stderr: progress, build/start timings.
#
# Environment overrides (all optional):
#   KAS_DIR             state dir               (default <repo>/target/kube-apiserver)
#   KAS_PORT            apiserver secure port   (default 46443)
#   KAS_ETCD_PORT       etcd client port        (default 42379)
#   KAS_ETCD_PEER_PORT  etcd peer port          (default 42380)
#   KAS_TIMEOUT         seconds to wait for etcd / readiness (default 120)
#   KAS_ETCD            debian (default): Debian's etcd-server (3.4.23), apt-get
#                       installed when missing; go: etcd built from
#                       go.etcd.io/etcd/server/v3 at the version k8s.io/kubernetes
#                       requires (3.6.4; ~+1 min of build), which has
#                       RequestWatchProgress, so streaming lists work. Each has
#                       its own data dir (etcd-data/, etcd-data-go/).
#   KAS_KEEP_GOCACHE=1  keep the ~2 GiB Go build cache after building
#   KAS_EXTRA_ARGS      extra kube-apiserver flags (word-split), e.g. "--v=4"
# The k8s.io/kubernetes version is pinned by tests/apiserver/kube-apiserver/go.mod
# (+ go.sum), so builds are reproducible; the binary goes to bin/<version>/.
# A port given explicitly must be free (or held by our own running instance);
# a default port that is busy is replaced by the next free one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODDIR=$HERE/kube-apiserver
DIR=${KAS_DIR:-$ROOT/target/kube-apiserver}
TIMEOUT=${KAS_TIMEOUT:-120}
# the k8s.io/kubernetes version required by the checked-in go.mod
VERSION=$(sed -nE 's/^[[:space:]]*(require[[:space:]]+)?k8s\.io\/kubernetes[[:space:]]+(v[^[:space:]]+).*/\2/p' "$MODDIR/go.mod" | head -n1)
BIN=$DIR/bin/$VERSION/kube-apiserver
ETCD_KIND=${KAS_ETCD:-debian}
ETCD_VERSION=$(sed -nE 's/^[[:space:]]*(require[[:space:]]+)?go\.etcd\.io\/etcd\/server\/v3[[:space:]]+(v[^[:space:]]+).*/\2/p' "$MODDIR/go.mod" | head -n1)
case $ETCD_KIND in
    debian) ETCD_BIN=etcd; ETCD_DATA=$DIR/etcd-data ;;
    go) ETCD_BIN=$DIR/bin/etcd-$ETCD_VERSION/etcd; ETCD_DATA=$DIR/etcd-data-go ;;
    *) echo "KAS_ETCD must be debian or go, not '$ETCD_KIND'" >&2; exit 2 ;;
esac
PKI=$DIR/pki
KUBECONFIG_OUT=$DIR/kubeconfig
PORTS_FILE=$DIR/ports.env

log() { printf '[kube-apiserver/up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); } # ms -> "s.d"

[[ $VERSION == v1.* ]] || die "cannot read the k8s.io/kubernetes version from $MODDIR/go.mod"
mkdir -p "$DIR"

# ---------------------------------------------------------------- helpers
# pid_alive FILE NAME: pid in FILE is running and its argv[0] ends with NAME
pid_alive() {
    local f=$1 name=$2 pid exe
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    exe=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)
    [[ $exe == *"/$name" || $exe == "$name" ]]
}

# stop_pid FILE NAME: stop our NAME process in FILE and wait for it to exit.
# kube-apiserver's graceful shutdown takes 1-3 s, but the process sometimes
# lingers up to ~30 s after "apiserver is exiting"; a second SIGTERM makes it
# exit at once (k8s signal handler), so: TERM, 5 s, TERM, 2 s, KILL. Harmless:
# all state is in etcd, which acknowledges writes only once they are durable.
stop_pid() {
    local f=$1 name=$2 pid
    pid_alive "$f" "$name" || return 0
    pid=$(<"$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -e /proc/$pid ]] || return 0; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do [[ -e /proc/$pid ]] || return 0; sleep 0.1; done
    log "$name (pid $pid) still running 7s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 20); do [[ -e /proc/$pid ]] || return 0; sleep 0.1; done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port VAR DEFAULT OWNED: honour env override, then the previous run's
# port, then DEFAULT, moving on to the next free port if the candidate is busy.
# OWNED=yes: the port is held by our own live process, so it counts as free.
pick_port() {
    local var=$1 def=$2 owned=$3 cand
    if [[ -n ${!var:-} ]]; then
        cand=${!var}
        if [[ $owned != yes ]] && port_busy "$cand"; then
            die "$var=$cand is already in use by another process"
        fi
        printf -v "$var" '%s' "$cand"; return
    fi
    cand=${PREV[$var]:-$def}
    if [[ $owned == yes ]]; then printf -v "$var" '%s' "$cand"; return; fi
    local tries=0
    while port_busy "$cand" || [[ " ${TAKEN[*]} " == *" $cand "* ]]; do
        cand=$((cand + 1)); tries=$((tries + 1))
        ((tries < 200)) || die "no free port near $def for $var"
    done
    printf -v "$var" '%s' "$cand"
}

curl_k() { # curl against the apiserver with the admin client cert
    curl -sS --max-time 10 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}

# /readyz = etcd reachable + all post-start hooks done (RBAC bootstrap roles,
# priority-and-fairness config, the default/kube-system namespaces, ...).
apiserver_ready() {
    [[ -s $PKI/admin.crt && -n ${KAS_PORT:-} ]] || return 1
    [[ $(curl_k --max-time 3 "https://127.0.0.1:$KAS_PORT/readyz" 2>/dev/null) == ok ]]
}

etcd_healthy() {
    curl -s --max-time 3 "http://127.0.0.1:$KAS_ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

# start_bg PIDFILE LOGFILE CMD...: detached from our session and stdio,
# so `$(kube-up.sh)` returns and ^C in the caller's terminal does not kill it.
start_bg() {
    local pidf=$1 logf=$2; shift 2
    nohup setsid "$@" >>"$logf" 2>&1 </dev/null &
    echo $! >"$pidf"
}

wait_until() { # wait_until DESC CMD...: poll CMD every 0.2s up to $TIMEOUT s
    local desc=$1; shift
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@"; do
        (( $(date +%s) < deadline )) || { log "timed out after ${TIMEOUT}s waiting for $desc"; return 1; }
        sleep 0.2
    done
}

# ---------------------------------------------------------------- tools
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
[[ $ETCD_KIND == go ]] || command -v etcd >/dev/null || need_apt+=(etcd-server)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]} with apt-get"
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    # policy-rc.d 101: don't let the package start the system etcd service on :2379
    prc=/usr/sbin/policy-rc.d; had_prc=no
    [[ -e $prc ]] && had_prc=yes
    [[ $had_prc == yes ]] || { printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; }
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
    [[ $had_prc == yes ]] || rm -f "$prc"
fi
[[ $ETCD_KIND == go ]] || command -v etcd >/dev/null || die "etcd not found after install"

# ---------------------------------------------------------------- build
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the k8s.io/*
# staging modules with ./staging/...), so kube-apiserver/go.mod requires it and
# replaces every staging module with its published v0.<minor>.<patch> tag.
# go_build OUT PKG [go build flags...]: build PKG of the checked-in module
# into OUT, with all Go state under $DIR; output in $DIR/build.log.
go_build() {
    local out=$1 pkg=$2; shift 2
    command -v go >/dev/null || die "go not on PATH (need Go >= 1.24 for k8s.io/kubernetes $VERSION)"
    mkdir -p "$(dirname "$out")"
    local t0 t1; t0=$(now_ms)
    (
        cd "$MODDIR"
        export GOPATH=$DIR/go GOMODCACHE=$DIR/go/pkg/mod GOCACHE=$DIR/go-build
        export GOFLAGS="-p=2 -mod=readonly -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
        go build -trimpath "$@" -o "$out.tmp" "$pkg"
    ) >>"$DIR/build.log" 2>&1 || { tail -n 30 "$DIR/build.log" >&2; rm -f "$out.tmp"; die "go build $pkg failed (see $DIR/build.log)"; }
    mv "$out.tmp" "$out"
    t1=$(now_ms)
    log "build time $(basename "$out"): $(secs $((t1 - t0)))s"
    echo "$(basename "$out") $VERSION $(( (t1 - t0) / 1000 ))s $(date -u +%FT%TZ) load:$(cut -d' ' -f1-3 /proc/loadavg)" >>"$DIR/build-times.txt"
}
built=no
if [[ ! -x $BIN ]]; then
    log "building k8s.io/kubernetes/cmd/kube-apiserver@$VERSION (cold build takes 15-25 minutes on 2 busy cores)"
    : >"$DIR/build.log"
    # /version must report the real version (kube-rs, kubectl and the
    # compatibility-version code read it); `go build` leaves v0.0.0-master.
    minor=${VERSION#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    go_build "$BIN" k8s.io/kubernetes/cmd/kube-apiserver -ldflags="$ldflags"
    built=yes
else
    log "binary present: $BIN (build skipped)"
fi
if [[ $ETCD_KIND == go && ! -x $ETCD_BIN ]]; then
    [[ $ETCD_VERSION == v3.* ]] || die "cannot read the go.etcd.io/etcd/server/v3 version from $MODDIR/go.mod"
    log "building etcd $ETCD_VERSION (./kube-apiserver/etcd: go.etcd.io/etcd/server/v3/etcdmain)"
    go_build "$ETCD_BIN" ./etcd -ldflags="-s -w"
    built=yes
fi
# The Go build cache is ~2 GiB and useless once the binaries exist.
if [[ $built == yes && ${KAS_KEEP_GOCACHE:-0} != 1 ]]; then
    GOCACHE=$DIR/go-build GOTOOLCHAIN=local go clean -cache >/dev/null 2>&1 || true
    rm -rf "$DIR/go-build"
fi
if [[ $ETCD_KIND == go ]]; then ETCD_EXE=$ETCD_BIN; else ETCD_EXE=$(readlink -f "$(command -v etcd)"); fi

# ---------------------------------------------------------------- ports
declare -A PREV=()
if [[ -s $PORTS_FILE ]]; then
    while IFS='=' read -r k v; do [[ -n $k ]] && PREV[$k]=$v; done <"$PORTS_FILE"
fi
# A live instance from a previous run keeps its ports (unless overridden).
etcd_owned=no; api_owned=no
# ... and only if it is the etcd asked for (KAS_ETCD)
pid_alive "$DIR/etcd.pid" etcd && [[ $(readlink -f "/proc/$(<"$DIR/etcd.pid")/exe") == "$ETCD_EXE" ]] && etcd_owned=yes
pid_alive "$DIR/kube-apiserver.pid" kube-apiserver && api_owned=yes
if [[ -n ${KAS_ETCD_PORT:-} && ${KAS_ETCD_PORT} != "${PREV[KAS_ETCD_PORT]:-}" ]]; then etcd_owned=no; fi
if [[ -n ${KAS_ETCD_PEER_PORT:-} && ${KAS_ETCD_PEER_PORT} != "${PREV[KAS_ETCD_PEER_PORT]:-}" ]]; then etcd_owned=no; fi
if [[ -n ${KAS_PORT:-} && ${KAS_PORT} != "${PREV[KAS_PORT]:-}" ]]; then api_owned=no; fi
# live processes of ours that will not be reused (ports or KAS_ETCD changed) are
# stopped, kube-apiserver first (etcd 3.6 is slow to stop while clients are connected)
if [[ ($api_owned == no || $etcd_owned == no) ]] && pid_alive "$DIR/kube-apiserver.pid" kube-apiserver; then
    log "stopping previous kube-apiserver (ports changed or etcd not reusable)"
    stop_pid "$DIR/kube-apiserver.pid" kube-apiserver; api_owned=no
fi
if [[ $etcd_owned == no ]] && pid_alive "$DIR/etcd.pid" etcd; then
    log "stopping previous etcd (ports or KAS_ETCD changed)"; stop_pid "$DIR/etcd.pid" etcd
fi
TAKEN=()
pick_port KAS_ETCD_PORT 42379 "$etcd_owned"; TAKEN+=("$KAS_ETCD_PORT")
pick_port KAS_ETCD_PEER_PORT 42380 "$etcd_owned"; TAKEN+=("$KAS_ETCD_PEER_PORT")
pick_port KAS_PORT 46443 "$api_owned"; TAKEN+=("$KAS_PORT")

# ---------------------------------------------------------------- PKI
if [[ ! -s $PKI/sa.key ]]; then
    log "generating loopback PKI in $PKI"
    rm -rf "$PKI"; mkdir -p "$PKI"
    (
        cd "$PKI"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj "/CN=vmidentity-test-kube-ca" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=kube-apiserver"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt
        openssl req -new "${ec[@]}" -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=clientAuth" >admin.ext
        openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile admin.ext -out admin.crt
        # service-account token signing key (ES256); the public half verifies tokens
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key
        openssl pkey -in sa.key -pubout -out sa.pub
        rm -f ./*.csr ./*.ext ./*.srl
        chmod 600 ./*.key
    ) >"$DIR/pki.log" 2>&1 || { cat "$DIR/pki.log" >&2; die "openssl failed"; }
fi

b64() { base64 -w0 <"$1"; }
write_kubeconfig() { # $1 = path, $2 = server URL
    local tmp=$1.tmp.$$
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vmidentity-kube-test
  cluster:
    server: $2
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: vmidentity-kube-test
  context:
    cluster: vmidentity-kube-test
    user: admin
    namespace: default
current-context: vmidentity-kube-test
EOF
    chmod 600 "$tmp"; mv "$tmp" "$1"
}

printf 'KAS_ETCD_PORT=%s\nKAS_ETCD_PEER_PORT=%s\nKAS_PORT=%s\n' "$KAS_ETCD_PORT" "$KAS_ETCD_PEER_PORT" "$KAS_PORT" >"$PORTS_FILE"

# ---------------------------------------------------------------- fast path
# A live kube-apiserver that is not ready: if it was started less than 60 s ago
# (e.g. by a concurrent kube-up.sh) wait for it, up to 60 s after its start;
# an older one is broken or shutting down, and gets restarted below.
starting_grace() {
    local age
    age=$(ps -o etimes= -p "$(<"$DIR/kube-apiserver.pid")" 2>/dev/null | tr -d ' ') || return 1
    [[ $age =~ ^[0-9]+$ ]] && ((age < 60)) || return 1
    etcd_healthy || return 1
    log "kube-apiserver pid $(<"$DIR/kube-apiserver.pid") started ${age}s ago: waiting for it to be ready"
    TIMEOUT=$((60 - age)) wait_until "the starting kube-apiserver" ready_or_exiting && apiserver_ready
}
# shutting down: its log since the last start marker has the graceful-termination event
apiserver_exiting() {
    awk '/^=== /{s=0} /graceful-termination\] shutdown event/{s=1} END{exit !s}' "$DIR/kube-apiserver.log" 2>/dev/null
}
ready_or_exiting() { apiserver_ready || apiserver_exiting; }
if [[ $api_owned == yes && $etcd_owned == yes ]] && { apiserver_ready || starting_grace; }; then
    log "already running: https://127.0.0.1:$KAS_PORT (kube-apiserver pid $(<"$DIR/kube-apiserver.pid"), etcd pid $(<"$DIR/etcd.pid"))"
    write_kubeconfig "$KUBECONFIG_OUT" "https://127.0.0.1:$KAS_PORT"
    echo "$KUBECONFIG_OUT"
    exit 0
fi

t_start=$(now_ms)
# ---------------------------------------------------------------- etcd
if [[ $etcd_owned == yes ]] && etcd_healthy; then
    log "etcd already running (pid $(<"$DIR/etcd.pid"), :$KAS_ETCD_PORT)"
else
    # a kube-apiserver of ours bound to a dead etcd is useless: restart it too
    if [[ $api_owned == yes ]]; then
        stop_pid "$DIR/kube-apiserver.pid" kube-apiserver; api_owned=no
    fi
    if [[ $etcd_owned == yes ]]; then
        log "etcd pid $(<"$DIR/etcd.pid") not healthy: restarting"
        stop_pid "$DIR/etcd.pid" etcd
    fi
    mkdir -p "$ETCD_DATA"; chmod 700 "$ETCD_DATA"
    peer=http://127.0.0.1:$KAS_ETCD_PEER_PORT
    log "starting etcd ($ETCD_KIND: $("$ETCD_BIN" --version | sed -n 's/^etcd Version: //p')) on 127.0.0.1:$KAS_ETCD_PORT (peer :$KAS_ETCD_PEER_PORT, data $ETCD_DATA)"
    echo "=== $(date -u +%FT%TZ) start" >>"$DIR/etcd.log"
    start_bg "$DIR/etcd.pid" "$DIR/etcd.log" "$ETCD_BIN" \
        --name vmidentity-kube-test \
        --data-dir "$ETCD_DATA" \
        --listen-client-urls "http://127.0.0.1:$KAS_ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$KAS_ETCD_PORT" \
        --listen-peer-urls "$peer" \
        --initial-advertise-peer-urls "$peer" \
        --initial-cluster "vmidentity-kube-test=$peer" \
        --initial-cluster-state new \
        --logger zap --log-outputs stderr --log-level warn
    wait_until etcd etcd_healthy || { tail -n 30 "$DIR/etcd.log" >&2; die "etcd did not become healthy (log: $DIR/etcd.log)"; }
fi

# ---------------------------------------------------------------- kube-apiserver
if [[ $api_owned == yes ]]; then
    log "kube-apiserver pid $(<"$DIR/kube-apiserver.pid") not ready: restarting"
    stop_pid "$DIR/kube-apiserver.pid" kube-apiserver
fi
log "starting kube-apiserver $VERSION on https://127.0.0.1:$KAS_PORT"
echo "=== $(date -u +%FT%TZ) start" >>"$DIR/kube-apiserver.log"
# shellcheck disable=SC2086 # KAS_EXTRA_ARGS is meant to be word-split
start_bg "$DIR/kube-apiserver.pid" "$DIR/kube-apiserver.log" "$BIN" \
    --etcd-servers "http://127.0.0.1:$KAS_ETCD_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "$KAS_PORT" \
    --cert-dir "$DIR/apiserver-certs" \
    --tls-cert-file "$PKI/server.crt" \
    --tls-private-key-file "$PKI/server.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --authorization-mode RBAC \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,MutatingAdmissionWebhook,ResourceQuota \
    --v=1 \
    ${KAS_EXTRA_ARGS:-}
wait_until kube-apiserver apiserver_ready || {
    tail -n 40 "$DIR/kube-apiserver.log" >&2
    die "kube-apiserver not ready (/readyz) within ${TIMEOUT}s (log: $DIR/kube-apiserver.log)"
}
t_up=$(now_ms)
log "kube-apiserver ready after $(secs $((t_up - t_start)))s"

write_kubeconfig "$KUBECONFIG_OUT" "https://127.0.0.1:$KAS_PORT"
echo "$KUBECONFIG_OUT"
