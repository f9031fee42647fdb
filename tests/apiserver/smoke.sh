#!/usr/bin/env bash
# Smoke test for the apiserver from up.sh, with curl only (no kubectl):
#  - /healthz, /version served; /api (core group) is 404
#  - a tiny namespaced test CRD: a custom resource in namespace "default"
#    (Namespace objects don't exist), then the CRD is removed again
#  - Lease shim: create, update (PUT with resourceVersion), merge-patch
#  - Event shim: POST an events.k8s.io/v1 Event with top-level fields, merge-patch series
# Runs up.sh first (idempotent). Prints "N passed, 0 failed" at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KC=$("$HERE/up.sh")
DIR=$(dirname "$KC")
PKI=$DIR/pki
# shellcheck disable=SC1091
source "$DIR/ports.env"
API=https://127.0.0.1:$APISERVER_PORT
NS=default
pass=0; fail=0

k() { curl -sS --max-time 10 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"; }
# req METHOD PATH [curl args...] -> sets CODE and BODY (whitespace-stripped)
req() {
    local m=$1 p=$2; shift 2
    local out; out=$(mktemp)
    CODE=$(k -o "$out" -w '%{http_code}' -X "$m" "$@" "$API$p") || CODE=000
    BODY=$(tr -d ' \n\t' <"$out"); rm -f "$out"
}
check() { # check DESC CONDITION...
    local d=$1; shift
    if "$@"; then pass=$((pass + 1)); echo "ok   - $d" >&2
    else fail=$((fail + 1)); echo "FAIL - $d (HTTP $CODE: ${BODY:0:300})" >&2; fi
}
code_is() { [[ $CODE == "$1" ]]; }
body_has() { [[ $BODY == *"$1"* ]]; }
rv() { sed -n 's/.*"resourceVersion":"\([0-9]*\)".*/\1/p' <<<"$BODY"; }
json=(-H 'Content-Type: application/json')
merge=(-H 'Content-Type: application/merge-patch+json')

req GET /healthz;  check "/healthz ok" body_has ok
req GET /version;  check "/version 200" code_is 200
req GET /api;      check "/api (core group) is 404 - no core API" code_is 404
req GET /apis/coordination.k8s.io/v1; check "coordination.k8s.io/v1 discovery lists leases" body_has '"name":"leases"'
req GET /apis/events.k8s.io/v1;       check "events.k8s.io/v1 discovery lists events" body_has '"name":"events"'

# ---- tiny test CRD in namespace "default"
CRD=widgets.smoke.vmidentity.test
CRDS=/apis/apiextensions.k8s.io/v1/customresourcedefinitions
k -o /dev/null -X DELETE "$API$CRDS/$CRD" || true
for _ in $(seq 100); do req GET "$CRDS/$CRD"; [[ $CODE == 404 ]] && break; sleep 0.1; done
req POST "$CRDS" "${json[@]}" --data-binary @- <<EOF
{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
 "metadata":{"name":"$CRD"},
 "spec":{"group":"smoke.vmidentity.test","scope":"Namespaced",
  "names":{"plural":"widgets","singular":"widget","kind":"Widget","listKind":"WidgetList"},
  "versions":[{"name":"v1","served":true,"storage":true,
    "schema":{"openAPIV3Schema":{"type":"object","properties":{"spec":{"type":"object","properties":{"size":{"type":"integer"}}}}}}}]}}
EOF
check "create test CRD" code_is 201
for _ in $(seq 150); do
    req GET "$CRDS/$CRD"; body_has '"type":"Established","status":"True"' && break; sleep 0.2
done
check "test CRD Established" body_has '"type":"Established","status":"True"'
W=/apis/smoke.vmidentity.test/v1/namespaces/$NS/widgets
for _ in $(seq 100); do req GET "$W"; [[ $CODE == 200 ]] && break; sleep 0.1; done
req POST "$W" "${json[@]}" -d '{"apiVersion":"smoke.vmidentity.test/v1","kind":"Widget","metadata":{"name":"w1"},"spec":{"size":3}}'
check "create Widget in namespace default (no Namespace object needed)" code_is 201
req GET "$W/w1"; check "get Widget" body_has '"size":3'
req DELETE "$CRDS/$CRD"; check "delete test CRD" code_is 200
for _ in $(seq 100); do req GET "$CRDS/$CRD"; [[ $CODE == 404 ]] && break; sleep 0.1; done
check "test CRD gone" code_is 404

# ---- Lease shim
L=/apis/coordination.k8s.io/v1/namespaces/$NS/leases
k -o /dev/null -X DELETE "$API$L/smoke-lease" || true
req POST "$L" "${json[@]}" -d '{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"smoke-lease"},
  "spec":{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2025-01-01T00:00:00.000000Z","renewTime":"2025-01-01T00:00:00.000000Z","leaseTransitions":0}}'
check "create Lease" code_is 201
rv1=$(rv)
req PUT "$L/smoke-lease" "${json[@]}" -d '{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"smoke-lease","resourceVersion":"'"$rv1"'"},
  "spec":{"holderIdentity":"b","leaseDurationSeconds":15,"acquireTime":"2025-01-01T00:00:10.000000Z","renewTime":"2025-01-01T00:00:10.000000Z","leaseTransitions":1}}'
check "update Lease (PUT with resourceVersion)" body_has '"holderIdentity":"b"'
req PUT "$L/smoke-lease" "${json[@]}" -d '{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"smoke-lease","resourceVersion":"'"$rv1"'"},"spec":{"holderIdentity":"c"}}'
check "stale resourceVersion -> 409 Conflict (optimistic concurrency works)" code_is 409
req PATCH "$L/smoke-lease" "${merge[@]}" -d '{"spec":{"renewTime":"2025-01-01T00:00:20.000000Z"}}'
check "merge-patch Lease renewTime" body_has '"renewTime":"2025-01-01T00:00:20.000000Z"'
req PATCH "$L/smoke-lease" -H 'Content-Type: application/strategic-merge-patch+json' -d '{"spec":{"holderIdentity":"x"}}'
check "strategic-merge-patch on a CRD is 415 (use merge/JSON/apply patches)" code_is 415
req DELETE "$L/smoke-lease"; check "delete Lease" code_is 200

# ---- Event shim (events.k8s.io/v1: fields are top-level, not under spec)
E=/apis/events.k8s.io/v1/namespaces/$NS/events
k -o /dev/null -X DELETE "$API$E/smoke-event" || true
req POST "$E" "${json[@]}" -d '{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"smoke-event"},
  "eventTime":"2025-01-01T00:00:00.000000Z","reportingController":"vmidentity.test/smoke","reportingInstance":"smoke-1",
  "action":"Reconcile","reason":"Smoke","type":"Normal","note":"hello",
  "regarding":{"apiVersion":"smoke/v1","kind":"Thing","name":"t","namespace":"default"}}'
check "post events.k8s.io/v1 Event with top-level fields" code_is 201
check "Event fields preserved" body_has '"reportingController":"vmidentity.test/smoke"'
req PATCH "$E/smoke-event" "${merge[@]}" -d '{"series":{"count":2,"lastObservedTime":"2025-01-01T00:00:05.000000Z"}}'
check "merge-patch Event series (as kube-runtime Recorder does)" body_has '"series":{"count":2'
req DELETE "$E/smoke-event"; check "delete Event" code_is 200

echo "smoke: $pass passed, $fail failed" >&2
echo "$pass passed, $fail failed"
((fail == 0))
