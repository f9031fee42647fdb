#!/usr/bin/env bash
# Bring up a real Kubernetes API server (k8s.io/apiextensions-apiserver + etcd)
# on loopback for tests. Idempotent: if it is already up and healthy, it only
# re-applies the shim CRDs and prints the kubeconfig path.
#
# stdout: exactly one line, the kubeconfig path (so KUBECONFIG=$(up.sh) works).
# stderr: progress, build/start timings.
#
# Environment overrides (all optional):
#   APISERVER_VERSION   k8s.io/apiextensions-apiserver version   (default v0.34.13)
#   APISERVER_DIR       state dir               (default <repo>/target/apiserver)
#   APISERVER_PORT      apiserver secure port   (default 36443)
#   ETCD_PORT           etcd client port        (default 32379)
#   ETCD_PEER_PORT      etcd peer port          (default 32380)
#   APISERVER_TIMEOUT   seconds to wait for health/CRDs (default 120)
#   APISERVER_KEEP_GOCACHE=1  keep the ~1.5 GiB Go build cache after building
# A port given explicitly must be free (or held by our own running instance);
# a default port that is busy is replaced by the next free one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=${APISERVER_VERSION:-v0.34.13}
DIR=${APISERVER_DIR:-$ROOT/target/apiserver}
TIMEOUT=${APISERVER_TIMEOUT:-120}
BIN=$DIR/bin/$VERSION/apiextensions-apiserver
PKI=$DIR/pki
KUBECONFIG_OUT=$DIR/kubeconfig
PORTS_FILE=$DIR/ports.env

log() { printf '[apiserver/up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }

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
    [[ $exe == *"$name" ]]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port VAR DEFAULT: honour env override, then the previous run's port,
# then DEFAULT, moving on to the next free port if the candidate is busy.
# $2 owner check: a port held by our own live process counts as free.
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

apiserver_healthy() {
    [[ -s $PKI/admin.crt && -n ${APISERVER_PORT:-} ]] || return 1
    [[ $(curl_k --max-time 3 "https://127.0.0.1:$APISERVER_PORT/healthz" 2>/dev/null) == ok ]]
}

etcd_healthy() {
    curl -s --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

# start_bg NAME PIDFILE LOGFILE CMD...: detached from our session and stdio,
# so `$(up.sh)` returns and ^C in the caller's terminal does not kill it.
start_bg() {
    local pidf=$1 logf=$2; shift 2
    nohup setsid "$@" >>"$logf" 2>&1 </dev/null &
    echo $! >"$pidf"
}

# ---------------------------------------------------------------- tools
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v etcd >/dev/null || need_apt+=(etcd-server)
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
command -v etcd >/dev/null || die "etcd not found after install"

# ---------------------------------------------------------------- build
if [[ ! -x $BIN ]]; then
    command -v go >/dev/null || die "go not on PATH (need Go >= 1.25 for $VERSION)"
    log "building k8s.io/apiextensions-apiserver@$VERSION (cold build takes minutes on 2 cores)"
    t0=$(now_ms)
    (
        export GOPATH=$DIR/go GOMODCACHE=$DIR/go/pkg/mod GOCACHE=$DIR/go-build
        export GOBIN=$DIR/bin/$VERSION GOFLAGS=-p=2 GOTOOLCHAIN=local CGO_ENABLED=0
        go install -trimpath -ldflags='-s -w' "k8s.io/apiextensions-apiserver@$VERSION"
    ) >"$DIR/build.log" 2>&1 || { tail -n 30 "$DIR/build.log" >&2; die "go install failed (see $DIR/build.log)"; }
    t1=$(now_ms)
    log "build time: $(( (t1 - t0) / 1000 )).$(( (t1 - t0) % 1000 / 100 ))s"
    echo "$VERSION $(( (t1 - t0) / 1000 ))s $(date -u +%FT%TZ)" >>"$DIR/build-times.txt"
    # The Go build cache is ~1.5 GiB and useless once the binary exists.
    if [[ ${APISERVER_KEEP_GOCACHE:-0} != 1 ]]; then
        GOCACHE=$DIR/go-build GOTOOLCHAIN=local go clean -cache >/dev/null 2>&1 || true
        rm -rf "$DIR/go-build"
    fi
else
    log "binary present: $BIN (build skipped)"
fi

# ---------------------------------------------------------------- ports
declare -A PREV=()
if [[ -s $PORTS_FILE ]]; then
    while IFS='=' read -r k v; do [[ -n $k ]] && PREV[$k]=$v; done <"$PORTS_FILE"
fi
# A live instance from a previous run keeps its ports (unless overridden).
etcd_owned=no; api_owned=no
pid_alive "$DIR/etcd.pid" etcd && etcd_owned=yes
pid_alive "$DIR/apiserver.pid" apiextensions-apiserver && api_owned=yes
if [[ -n ${ETCD_PORT:-} && ${ETCD_PORT} != "${PREV[ETCD_PORT]:-}" ]]; then etcd_owned=no; fi
if [[ -n ${ETCD_PEER_PORT:-} && ${ETCD_PEER_PORT} != "${PREV[ETCD_PEER_PORT]:-}" ]]; then etcd_owned=no; fi
if [[ -n ${APISERVER_PORT:-} && ${APISERVER_PORT} != "${PREV[APISERVER_PORT]:-}" ]]; then api_owned=no; fi
# live processes of ours that will not be reused (ports overridden) are stopped
if [[ $etcd_owned == no ]] && pid_alive "$DIR/etcd.pid" etcd; then
    log "stopping previous etcd (ports changed)"; kill "$(<"$DIR/etcd.pid")"; sleep 1
fi
if [[ ($api_owned == no || $etcd_owned == no) ]] && pid_alive "$DIR/apiserver.pid" apiextensions-apiserver; then
    log "stopping previous apiserver (ports changed or etcd not reusable)"; kill "$(<"$DIR/apiserver.pid")"; api_owned=no; sleep 1
fi
TAKEN=()
pick_port ETCD_PORT 32379 "$etcd_owned"; TAKEN+=("$ETCD_PORT")
pick_port ETCD_PEER_PORT 32380 "$etcd_owned"; TAKEN+=("$ETCD_PEER_PORT")
pick_port APISERVER_PORT 36443 "$api_owned"; TAKEN+=("$APISERVER_PORT")

# ---------------------------------------------------------------- PKI
if [[ ! -s $PKI/admin.key ]]; then
    log "generating loopback PKI in $PKI"
    rm -rf "$PKI"; mkdir -p "$PKI"
    (
        cd "$PKI"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj "/CN=vmidentity-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt
        openssl req -new "${ec[@]}" -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=clientAuth" >admin.ext
        openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile admin.ext -out admin.crt
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
- name: vmidentity-test
  cluster:
    server: $2
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: vmidentity-test
  context:
    cluster: vmidentity-test
    user: admin
    namespace: default
current-context: vmidentity-test
EOF
    chmod 600 "$tmp"; mv "$tmp" "$1"
}
# The apiserver insists on kubeconfigs for delegated authn/authz and for its
# core-API informers; nothing listens on port 1, so those calls just fail.
# Requests from system:masters never reach the delegated authorizer.
[[ -s $DIR/dummy-kubeconfig ]] || write_kubeconfig "$DIR/dummy-kubeconfig" "https://127.0.0.1:1"

printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" >"$PORTS_FILE"

# ---------------------------------------------------------------- fast path
if [[ $api_owned == yes && $etcd_owned == yes ]] && apiserver_healthy; then
    log "already running: https://127.0.0.1:$APISERVER_PORT (apiserver pid $(<"$DIR/apiserver.pid"), etcd pid $(<"$DIR/etcd.pid"))"
    fast=yes
else
    fast=no
fi

wait_until() { # wait_until DESC CMD...: poll CMD every 0.2s up to $TIMEOUT s
    local desc=$1; shift
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@"; do
        (( $(date +%s) < deadline )) || { log "timed out after ${TIMEOUT}s waiting for $desc"; return 1; }
        sleep 0.2
    done
}

if [[ $fast == no ]]; then
    t_start=$(now_ms)
    # -------------------------------------------------------------- etcd
    if [[ $etcd_owned == yes ]] && etcd_healthy; then
        log "etcd already running (pid $(<"$DIR/etcd.pid"), :$ETCD_PORT)"
    else
        if [[ $etcd_owned == yes ]]; then
            log "etcd pid $(<"$DIR/etcd.pid") not healthy or ports changed: restarting"
            kill "$(<"$DIR/etcd.pid")" 2>/dev/null || true; sleep 1
        fi
        # an apiserver of ours bound to a dead etcd is useless: restart it too
        if [[ $api_owned == yes ]]; then
            kill "$(<"$DIR/apiserver.pid")" 2>/dev/null || true; api_owned=no; sleep 1
        fi
        mkdir -p "$DIR/etcd-data"; chmod 700 "$DIR/etcd-data"
        peer=http://127.0.0.1:$ETCD_PEER_PORT
        log "starting etcd on 127.0.0.1:$ETCD_PORT (peer :$ETCD_PEER_PORT, data $DIR/etcd-data)"
        echo "=== $(date -u +%FT%TZ) start" >>"$DIR/etcd.log"
        start_bg "$DIR/etcd.pid" "$DIR/etcd.log" etcd \
            --name vmidentity-test \
            --data-dir "$DIR/etcd-data" \
            --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --listen-peer-urls "$peer" \
            --initial-advertise-peer-urls "$peer" \
            --initial-cluster "vmidentity-test=$peer" \
            --initial-cluster-state new \
            --logger zap --log-outputs stderr --log-level warn
        wait_until etcd etcd_healthy || { tail -n 30 "$DIR/etcd.log" >&2; die "etcd did not become healthy (log: $DIR/etcd.log)"; }
    fi

    # -------------------------------------------------------------- apiserver
    if [[ $api_owned == yes ]]; then
        log "apiserver pid $(<"$DIR/apiserver.pid") not healthy: restarting"
        kill "$(<"$DIR/apiserver.pid")" 2>/dev/null || true
        for _ in $(seq 50); do pid_alive "$DIR/apiserver.pid" apiextensions-apiserver || break; sleep 0.1; done
    fi
    log "starting apiextensions-apiserver $VERSION on https://127.0.0.1:$APISERVER_PORT"
    echo "=== $(date -u +%FT%TZ) start" >>"$DIR/apiserver.log"
    start_bg "$DIR/apiserver.pid" "$DIR/apiserver.log" "$BIN" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 \
        --secure-port "$APISERVER_PORT" \
        --cert-dir "$DIR/apiserver-certs" \
        --tls-cert-file "$PKI/server.crt" \
        --tls-private-key-file "$PKI/server.key" \
        --client-ca-file "$PKI/ca.crt" \
        --authentication-kubeconfig "$DIR/dummy-kubeconfig" \
        --authentication-skip-lookup \
        --authorization-kubeconfig "$DIR/dummy-kubeconfig" \
        --kubeconfig "$DIR/dummy-kubeconfig" \
        --enable-priority-and-fairness=false \
        --disable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
        --v=1
    wait_until apiserver apiserver_healthy || {
        tail -n 40 "$DIR/apiserver.log" >&2
        die "apiserver did not answer /healthz within ${TIMEOUT}s (log: $DIR/apiserver.log)"
    }
    t_up=$(now_ms)
    log "apiserver healthy after $(( (t_up - t_start) / 1000 )).$(( (t_up - t_start) % 1000 / 100 ))s"
fi

write_kubeconfig "$KUBECONFIG_OUT" "https://127.0.0.1:$APISERVER_PORT"

# ---------------------------------------------------------------- shim CRDs
API=https://127.0.0.1:$APISERVER_PORT
crd_url=$API/apis/apiextensions.k8s.io/v1/customresourcedefinitions
for f in "$HERE"/crds/*.yaml; do
    name=$(basename "$f" .yaml)
    # server-side apply: creates or updates, idempotent
    code=$(curl_k -o "$DIR/crd-apply.out" -w '%{http_code}' -X PATCH \
        -H 'Content-Type: application/apply-patch+yaml' --data-binary "@$f" \
        "$crd_url/$name?fieldManager=vmidentity-up&force=true") || code=000
    [[ $code == 200 || $code == 201 ]] || { cat "$DIR/crd-apply.out" >&2; die "applying CRD $name failed: HTTP $code"; }
done

crd_established() { # $1 = CRD name
    curl_k "$crd_url/$1" 2>/dev/null | tr -d ' \n\t' | grep -q '"type":"Established","status":"True"'
}
served() { [[ $(curl_k -o /dev/null -w '%{http_code}' "$API$1" 2>/dev/null) == 200 ]]; }
wait_until crd crd_established leases.coordination.k8s.io || die "Lease shim CRD not Established"
wait_until crd crd_established events.events.k8s.io || die "Event shim CRD not Established"
wait_until serve served /apis/coordination.k8s.io/v1/namespaces/default/leases || die "leases not served"
wait_until serve served /apis/events.k8s.io/v1/namespaces/default/events || die "events not served"
[[ $fast == yes ]] || log "shim CRDs Established (leases.coordination.k8s.io, events.events.k8s.io)"

echo "$KUBECONFIG_OUT"
