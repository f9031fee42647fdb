#!/usr/bin/env bash
# Try vmidentity locally, as the README's "Local try-out" section describes it step by step:
# a real kube-apiserver (tests/apiserver/kube-up.sh), the ARM simulator `armsim` seeded with
# examples/demo/world.yaml, the CRDs, the example policies and the admission policy, the
# examples' namespaces, the controller, and the example objects; then an out-of-band change
# in "Azure" that the controller repairs. It checks each step and exits non-zero when one
# fails, printing how long each took.
#
#   scripts/try-local.sh        # up: everything above; leaves it running
#   scripts/try-local.sh down   # stops the controller, armsim and the API server, and wipes
#                               # its etcd data (the try-out's policies and admission policy
#                               # would otherwise stay for the next user of the API server,
#                               # the end-to-end tests included); `down --keep` keeps it
#
# Environment (optional): TRY_DIR (state, logs; default target/try-local), ARMSIM_PORT
# (48080), METRICS_PORT (48081), KAS_DIR (passed to kube-up.sh), CARGO_PROFILE (dev).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DIR=${TRY_DIR:-$ROOT/target/try-local}
ARMSIM_PORT=${ARMSIM_PORT:-48080}
METRICS_PORT=${METRICS_PORT:-48081}
PROFILE=${CARGO_PROFILE:-dev}
case $PROFILE in dev) BIN=$ROOT/target/debug ;; *) BIN=$ROOT/target/$PROFILE ;; esac
ARM=http://127.0.0.1:$ARMSIM_PORT
SUB=/subscriptions/00000000-0000-0000-0000-000000000001
VM_WEB_1=$SUB/resourceGroups/rg-apps/providers/Microsoft.Compute/virtualMachines/vm-web-1
UAI_WEB=$SUB/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-web
mkdir -p "$DIR"

log() { printf '[try-local] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now_ms() { date +%s%3N; }
T0=$(now_ms)
STEP_T=$T0
step() { # step "what": prints the time the previous step took
    local t
    t=$(now_ms)
    log "$(awk -v ms=$((t - STEP_T)) 'BEGIN { printf "%6.1fs", ms / 1000 }') $*"
    STEP_T=$t
}
stop_pid() { # stop_pid FILE: ends the process we started (by its recorded id) and waits
    [[ -s $1 ]] || return 0
    local pid
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$1"
}

if [[ ${1:-up} == down ]]; then
    stop_pid "$DIR/controller.pid"
    stop_pid "$DIR/armsim.pid"
    if [[ ${2:-} == --keep ]]; then
        tests/apiserver/kube-down.sh >&2 || true
    else
        tests/apiserver/kube-down.sh --clean >&2 || true
    fi
    log "stopped"
    exit 0
fi

# 1. The binaries: the controller and the simulator.
cargo build -q --profile "$PROFILE" -p vmidentity -p vmidentity-simulator --bin vmidentity --bin armsim
step "built vmidentity and armsim ($PROFILE)"

# 2. A real API server (Kubernetes 1.34; built from Go modules the first time, 10-18 min).
KUBECONFIG=$(tests/apiserver/kube-up.sh)
export KUBECONFIG
echo "export KUBECONFIG=$KUBECONFIG" >"$DIR/env"
step "kube-apiserver ready (KUBECONFIG=$KUBECONFIG)"

# 3. The ARM simulator: tokens sim-token (ARM) and sim-graph-token (Microsoft Graph).
stop_pid "$DIR/armsim.pid"
"$BIN/armsim" --world examples/demo/world.yaml --listen "127.0.0.1:$ARMSIM_PORT" \
    >"$DIR/armsim.log" 2>&1 &
echo $! >"$DIR/armsim.pid"
for _ in $(seq 100); do curl -sf "$ARM/_sim/counters" >/dev/null && break; sleep 0.1; done
curl -sf "$ARM/_sim/counters" >/dev/null || die "armsim did not start (see $DIR/armsim.log)"
step "armsim serving $ARM"

# 4. The CRDs, the admission policy (every VirtualMachineIdentityPolicy is its parameter)
#    and the example policies. The teams' policies cover namespaces by name, the platform's
#    by the label vmidentity.dev/tenant=platform (teams.yaml creates that namespace with it).
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s \
    crd/virtualmachineidentities.vmidentity.dev crd/virtualmachineidentitypolicies.vmidentity.dev >/dev/null
kubectl apply -f manifests/admission.yaml >/dev/null
kubectl apply -f examples/policies/teams.yaml >/dev/null
step "CRDs, admission policy and examples/policies/teams.yaml applied"

# 5. Namespaces: the examples' (team-web, team-data, team-batch; platform came with the
#    policies) and the controller's own, where its leader Lease lives.
for ns in team-web team-data team-batch vmidentity-system; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
step "namespaces created"

# 6. The controller, outside a pod: Lease in vmidentity-system, metrics on loopback,
#    a 30 s resync so the drift below is repaired soon.
stop_pid "$DIR/controller.pid"
VMIDENTITY_LOG_FORMAT=text "$BIN/vmidentity" controller \
    --arm-endpoint "$ARM" --token sim-token \
    --graph-endpoint "$ARM" --graph-token sim-graph-token \
    --metrics-addr "127.0.0.1:$METRICS_PORT" --lease-namespace vmidentity-system \
    --resync-seconds 30 --lro-poll-ms 200 \
    >"$DIR/controller.log" 2>&1 &
echo $! >"$DIR/controller.pid"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null || die "controller not ready (see $DIR/controller.log)"
step "controller running (log: $DIR/controller.log)"

# 7. The example objects: every one Ready.
kubectl apply -f examples/ >/dev/null
# (The examples' namespaces only: etcd keeps what earlier runs or tests left in others.)
for ns in team-web team-data team-batch platform; do
    kubectl wait vmid --all -n "$ns" --for=condition=Ready --timeout=90s >/dev/null ||
        { kubectl get vmid -n "$ns" -o wide >&2; die "not every object in $ns became Ready"; }
done
step "examples/ applied and Ready"
kubectl get vmid -A >&2

# 8. Someone else detaches uai-web from vm-web-1 in "Azure"; the next resync puts it back.
curl -sf -X POST "$ARM/_sim/identity" -H 'content-type: application/json' \
    -d "{\"id\":\"$VM_WEB_1\",\"removeUserAssigned\":[\"$UAI_WEB\"]}" >/dev/null ||
    die "out-of-band edit refused"
step "out-of-band: uai-web detached from vm-web-1"
back=""
for _ in $(seq 90); do
    if curl -sf -H 'Authorization: Bearer sim-token' \
        "$ARM$VM_WEB_1?api-version=2018-06-01" | grep -qi "userAssignedIdentities/uai-web"; then
        back=yes
        break
    fi
    sleep 1
done
[[ -n $back ]] || die "the drift was not repaired within 90 s (see $DIR/controller.log)"
step "drift repaired by the controller's resync"

log "$(awk -v ms=$(($(now_ms) - T0)) 'BEGIN { printf "total %.1fs", ms / 1000 }')"
cat >&2 <<EOF
[try-local] Running. Try:
  source $DIR/env                 # KUBECONFIG
  kubectl get vmid -A -o wide; kubectl describe vmid -n team-web web-app
  cargo run -q -p vmidentity -- plan -f examples/ --endpoint $ARM --token sim-token
  curl -s -X POST $ARM/_sim/identity -d '{"id":"$VM_WEB_1","systemAssigned":false}'
  tail -f $DIR/controller.log
  scripts/try-local.sh down       # stop everything
EOF
