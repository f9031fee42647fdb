#!/usr/bin/env bash
# `kubectl apply -k manifests/` on a fresh cluster, in one run, against a real API server.
#
#   KUBECONFIG=$(KAS_DIR=... tests/apiserver/kube-up.sh) scripts/check-apply-k.sh
#
# The cluster must not have the vmidentity CRDs yet (a fresh etcd: `kube-down.sh --clean`
# then `kube-up.sh`); the script refuses otherwise, since a second run is exactly what it must
# not need. Steps, each checked:
#   1. kubectl apply -k manifests/          exits 0 on the first run (no custom resource in it)
#   2. both CRDs become Established
#   3. kubectl apply -k manifests/policy/   exits 0 on the first run (the starting policy)
#   4. the objects are there: Deployment, ValidatingAdmissionPolicy(+Binding), the policy
#   5. a second `kubectl apply -k manifests/` exits 0 and `kubectl diff -k` is then empty
# Why the policy is apart: with it in the base, the first run on a fresh cluster failed
# ("no matches for kind VirtualMachineIdentityPolicy ... ensure CRDs are installed first":
# kubectl does not wait for a CRD it has just created, kubernetes/kubectl#1179) and a second
# run was needed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KUBECTL=${KUBECTL:-kubectl}
: "${KUBECONFIG:?set KUBECONFIG (tests/apiserver/kube-up.sh prints one)}"
export KUBECONFIG

fail() { echo "check-apply-k: FAIL: $*" >&2; exit 1; }
ok() { echo "check-apply-k: ok: $*" >&2; }

for crd in virtualmachineidentities.vmidentity.dev virtualmachineidentitypolicies.vmidentity.dev; do
    if "$KUBECTL" get crd "$crd" >/dev/null 2>&1; then
        fail "crd/$crd already exists: this check needs a fresh cluster (kube-down.sh --clean; kube-up.sh)"
    fi
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! "$KUBECTL" apply -k manifests/ >"$out" 2>&1; then
    sed 's/^/  | /' "$out" >&2
    fail "the first kubectl apply -k manifests/ failed"
fi
grep -q 'customresourcedefinition.apiextensions.k8s.io/virtualmachineidentitypolicies.vmidentity.dev created' "$out" \
    || { sed 's/^/  | /' "$out" >&2; fail "the CRDs were not created by the first run"; }
ok "kubectl apply -k manifests/ on a fresh cluster: one run, exit 0 ($(wc -l <"$out") objects)"

"$KUBECTL" wait --for condition=established --timeout=60s \
    crd/virtualmachineidentities.vmidentity.dev crd/virtualmachineidentitypolicies.vmidentity.dev >/dev/null \
    || fail "the CRDs did not become Established"
ok "CRDs Established"

if ! "$KUBECTL" apply -k manifests/policy/ >"$out" 2>&1; then
    sed 's/^/  | /' "$out" >&2
    fail "kubectl apply -k manifests/policy/ failed"
fi
ok "kubectl apply -k manifests/policy/: one run, exit 0"

"$KUBECTL" -n vmidentity-system get deployment/vmidentity >/dev/null || fail "no Deployment"
vap=$("$KUBECTL" get validatingadmissionpolicy,validatingadmissionpolicybinding -o name)
[[ $(grep -c vmidentity-guardrails <<<"$vap") == 2 ]] || fail "no ValidatingAdmissionPolicy and Binding: $vap"
"$KUBECTL" get virtualmachineidentitypolicy vmidentity-default >/dev/null || fail "no starting policy"
ok "Deployment, admission policy and the starting policy are there"

if ! "$KUBECTL" apply -k manifests/ >"$out" 2>&1; then
    sed 's/^/  | /' "$out" >&2
    fail "the second kubectl apply -k manifests/ failed"
fi
if [[ -n $("$KUBECTL" diff -k manifests/ 2>&1 || true) ]]; then
    "$KUBECTL" diff -k manifests/ 2>&1 | sed 's/^/  | /' >&2 || true
    fail "after a second run, kubectl diff -k manifests/ is not empty"
fi
ok "a second run exits 0 and kubectl diff -k manifests/ is empty"
echo "check-apply-k: all checks passed" >&2
