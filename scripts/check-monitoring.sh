#!/usr/bin/env bash
# Day-2 checks, each against the real tool that consumes the file:
#   - alerts: `promtool check rules` on charts/vmidentity/files/prometheus-rules.yaml and
#     `promtool test rules` on tests/monitoring/alerts-test.yaml (every alert fires / stays silent)
#   - Argo CD health: deploy/argocd/.../VirtualMachineIdentity/health.lua run by lua5.4 on each
#     testdata/ object of its health_test.yaml, status and message compared
#   - Flux / kstatus: the same objects through sigs.k8s.io/cli-utils' kstatus (tests/kstatus, a
#     Go program built from the Go module proxy into target/tools/bin), compared with `kstatus:`
#
# Needs promtool (Debian package prometheus) and lua5.4 (Debian package lua5.4); .ci/run
# installs both. Prints "N passed, N failed" last; exits non-zero on any failure.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

RULES=charts/vmidentity/files/prometheus-rules.yaml
ALERT_TESTS=tests/monitoring/alerts-test.yaml
HEALTH=deploy/argocd/resource_customizations/vmidentity.dev/VirtualMachineIdentity
TOOLS=${PACKAGING_TOOLS_DIR:-$ROOT/target/tools}
WORK=$ROOT/target/monitoring
mkdir -p "$WORK" "$TOOLS/bin"

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

pass=0; fail=0
ok()  { pass=$((pass + 1)); printf 'ok   - %s\n' "$*"; }
bad() { fail=$((fail + 1)); printf 'FAIL - %s\n' "$*"; }
check() {
    local desc=$1; shift
    local log=$WORK/check-$((pass + fail + 1)).log
    if "$@" >"$log" 2>&1; then ok "$desc"
    else bad "$desc"; tail -n 40 "$log" | sed 's/^/     | /'; fi
}

printf '\n==> alerts (promtool)\n'
if command -v promtool >/dev/null; then
    check "promtool check rules $RULES" promtool check rules "$RULES"
    check "promtool test rules $ALERT_TESTS (each alert fires and stays silent)" promtool test rules "$ALERT_TESTS"
    # Every alert of the rules file has a unit test that expects it to fire, and a runbook section.
    python3 - "$RULES" "$ALERT_TESTS" docs/runbooks.md >"$WORK/coverage.log" 2>&1 <<'PY'
import re, sys, yaml
rules, tests, runbooks = sys.argv[1:]
alerts = [r["alert"] for g in yaml.safe_load(open(rules))["groups"] for r in g["rules"] if "alert" in r]
fired, silent = set(), set()
for t in yaml.safe_load(open(tests))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fired if a.get("exp_alerts") else silent).add(a["alertname"])
anchors = {re.sub(r"[^a-z0-9 -]", "", l[3:].strip().lower()).replace(" ", "-")
           for l in open(runbooks) if l.startswith("## ")}
bad = 0
for a in alerts:
    for what, ok in (("a test where it fires", a in fired), ("a test where it stays silent", a in silent),
                     ("a runbook section", a.lower() in anchors)):
        if not ok:
            print("%s has no %s" % (a, what)); bad += 1
print("%d alerts" % len(alerts))
sys.exit(1 if bad or len(alerts) < 8 else 0)
PY
    [[ $? == 0 ]] && ok "every alert has a firing test, a silent test and a runbook section ($(tail -n1 "$WORK/coverage.log"))" \
        || { bad "every alert has a firing test, a silent test and a runbook section"; sed 's/^/     | /' "$WORK/coverage.log"; }
else
    bad "promtool is installed (apt-get install prometheus)"
fi

printf '\n==> Argo CD health.lua (lua5.4) and kstatus on %s/testdata\n' "$HEALTH"
LUA=$(command -v lua5.4 || command -v lua || true)
# Each test: the object as a Lua table literal in `obj` (as Argo CD passes it), then health.lua.
python3 - "$HEALTH" "$WORK/lua" >"$WORK/lua-cases.log" 2>&1 <<'PY' || bad "health_test.yaml cases written"
import json, os, sys, yaml
health, out = sys.argv[1:]
os.makedirs(out, exist_ok=True)
def lua(v):
    if isinstance(v, dict):
        return "{" + ", ".join("[%s] = %s" % (json.dumps(k), lua(x)) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "{" + ", ".join(lua(x) for x in v) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "nil"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))
with open(os.path.join(out, "cases.tsv"), "w") as cases:
    for i, t in enumerate(yaml.safe_load(open(os.path.join(health, "health_test.yaml")))["tests"]):
        obj = yaml.safe_load(open(os.path.join(health, t["inputPath"])))
        script = os.path.join(out, "case-%d.lua" % i)
        with open(script, "w") as f:
            f.write("obj = %s\n" % lua(obj))
            f.write("local hs = (function()\n%s\nend)()\n" % open(os.path.join(health, "health.lua")).read())
            f.write('io.write(hs.status, "\\t", hs.message or "", "\\n")\n')
        cases.write("\t".join([t["inputPath"], script, t["healthStatus"]["status"],
                               t["healthStatus"].get("message", ""), t.get("kstatus", "")]) + "\n")
PY
if [[ -z $LUA ]]; then
    bad "lua5.4 is installed (apt-get install lua5.4)"
else
    while IFS=$'\t' read -r input script want_status want_message _; do
        got=$("$LUA" "$script" 2>&1)
        if [[ $got == "$want_status"$'\t'"$want_message" ]]; then ok "argocd health $input: $want_status"
        else bad "argocd health $input: want '$want_status	$want_message', got '$got'"; fi
    done <"$WORK/lua/cases.tsv"
fi

# kstatus: built once from tests/kstatus (pinned in its go.mod/go.sum) into target/tools/bin.
KSTATUS=$TOOLS/bin/kstatus-check
stamp=$TOOLS/bin/.kstatus-check.version
want_stamp=$(cat tests/kstatus/go.mod tests/kstatus/go.sum tests/kstatus/main.go | sha256sum | cut -c1-16)
if [[ ! -x $KSTATUS || ! -f $stamp || $(<"$stamp") != "$want_stamp" ]]; then
    t0=$(date +%s)
    if (cd tests/kstatus && GOTOOLCHAIN=local GOPATH=$TOOLS/go GOMODCACHE=$TOOLS/go/pkg/mod \
            GOFLAGS="-p=2 -mod=readonly" CGO_ENABLED=0 go build -trimpath -o "$KSTATUS" .) >"$WORK/kstatus-build.log" 2>&1; then
        echo "$want_stamp" >"$stamp"
        echo "kstatus-check built in $(( $(date +%s) - t0 )) s"
    else
        bad "go build tests/kstatus"; tail -n 20 "$WORK/kstatus-build.log" | sed 's/^/     | /'
    fi
fi
if [[ -x $KSTATUS ]]; then
    while IFS=$'\t' read -r input _ _ _ want; do
        got=$("$KSTATUS" "$HEALTH/$input" 2>&1)
        got_status=$(cut -d' ' -f2 <<<"$got")
        if [[ -n $want && $got_status == "$want" ]]; then ok "kstatus $input: $want"
        else bad "kstatus $input: want '$want', got '$got'"; fi
    done <"$WORK/lua/cases.tsv"
fi

printf '\n%d passed, %d failed\n' "$pass" "$fail"
((fail == 0))
