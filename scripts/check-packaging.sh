#!/usr/bin/env bash
# Packaging checks, as CI runs them: the Helm chart, the kustomize base in manifests/, the
# Dockerfile, the chart's CRD on a real API server, and the static binary the image ships.
#
#   scripts/check-packaging.sh                   # everything (the static release builds, amd64 then arm64, are last: several minutes each)
#   SKIP_STATIC_BUILD=1 scripts/check-packaging.sh   # all but the static build
#   SKIP_APISERVER=1 ...                         # all but the API-server step
#   scripts/check-packaging.sh --tools-only      # only install the pinned tools
#
# Tools are installed idempotently from the registries this machine reaches and cached under
# target/tools/ (delete it to rebuild):
#   helm, kubeconform, kustomize: `go install` from the Go module proxy (GOBIN=target/tools/bin)
#   Kubernetes JSON schemas for kubeconform: the PyPI package kubernetes-validate (a wheel that
#   ships the schemas of each Kubernetes minor), unpacked to target/tools/kubernetes-json-schema/
# Prints "N passed, N failed" last; exits non-zero on any failure.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

# ---------------------------------------------------------------- pinned versions
HELM_MODULE=helm.sh/helm/v3/cmd/helm
HELM_VERSION=v3.22.0
HELM_K8S_MAJOR=1 HELM_K8S_MINOR=37   # helm v3.22.0's k8s.io/client-go is v0.37.0
KUBECONFORM_MODULE=github.com/yannh/kubeconform/cmd/kubeconform
KUBECONFORM_VERSION=v0.8.0
KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5
KUSTOMIZE_VERSION=v5.8.2        # v5.8.3 needs go >= 1.27
SCHEMA_PKG=kubernetes-validate   # PyPI; ships kubernetes-json-schema/v1.X.0-local[-strict]/
SCHEMA_PKG_VERSION=1.34.1
K8S_VERSION=1.34.0               # the schemas kubeconform validates against (k8s-openapi v1_34)

TOOLS=${PACKAGING_TOOLS_DIR:-$ROOT/target/tools}   # override: a cold cache elsewhere
BIN=$TOOLS/bin
WORK=$ROOT/target/packaging
SCHEMAS=$TOOLS/kubernetes-json-schema
CRD_FILE=vmidentity.dev_virtualmachineidentities.yaml
POLICY_CRD_FILE=vmidentity.dev_virtualmachineidentitypolicies.yaml
CHART=charts/vmidentity
MUSL_TARGET=x86_64-unknown-linux-musl
ARM_TARGET=aarch64-unknown-linux-musl

export GOTOOLCHAIN=local GOPATH=$TOOLS/go GOMODCACHE=$TOOLS/go/pkg/mod GOCACHE=$TOOLS/go-build \
    GOBIN=$BIN GOFLAGS=-p=2 CGO_ENABLED=0
mkdir -p "$BIN" "$WORK"

pass=0; fail=0
step() { printf '\n==> %s\n' "$*"; }
ok()   { pass=$((pass + 1)); printf 'ok   - %s\n' "$*"; }
bad()  { fail=$((fail + 1)); printf 'FAIL - %s\n' "$*"; }
# check DESC CMD...: runs CMD (output to a log), ok when it exits 0; on failure shows the log's tail.
check() {
    local desc=$1; shift
    local log; log=$WORK/check-$((pass + fail + 1)).log
    if "$@" >"$log" 2>&1; then ok "$desc"
    else bad "$desc"; tail -n 25 "$log" | sed 's/^/     | /'; fi
}
# check_fails DESC EXPECTED CMD...: ok when CMD exits non-zero AND its output contains EXPECTED.
check_fails() {
    local desc=$1 expected=$2; shift 2
    local log; log=$WORK/check-$((pass + fail + 1)).log
    if "$@" >"$log" 2>&1; then
        bad "$desc (it succeeded, must fail)"
    elif grep -qF -- "$expected" "$log"; then
        ok "$desc"
    else
        bad "$desc (failed, but without '$expected')"; tail -n 15 "$log" | sed 's/^/     | /'
    fi
}
finish() {
    printf '\n%d passed, %d failed\n' "$pass" "$fail"
    ((fail == 0))
    exit
}
secs() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(secs)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- tools
# go_tool NAME MODULE VERSION [LDFLAGS]: go install MODULE@VERSION unless target/tools/bin/NAME
# is that version (built with those ldflags).
go_tool() {
    local name=$1 module=$2 version=$3 ldflags="-s -w ${4:-}" stamp=$BIN/.$1.version t0
    if [[ -x $BIN/$name && -f $stamp && $(<"$stamp") == "$module@$version $ldflags" ]]; then
        printf '%-12s %s@%s (cached)\n' "$name" "$module" "$version"
        return 0
    fi
    command -v go >/dev/null || { echo "go is not installed" >&2; return 1; }
    t0=$(secs)
    if ! go install -trimpath -ldflags="$ldflags" "$module@$version" >"$TOOLS/$name-build.log" 2>&1; then
        echo "go install $module@$version failed:" >&2; tail -n 30 "$TOOLS/$name-build.log" >&2
        return 1
    fi
    echo "$module@$version $ldflags" >"$stamp"
    local took; took=$(elapsed "$t0")
    printf '%-12s %s@%s built in %ss\n' "$name" "$module" "$version" "$took"
    printf '%s %s@%s %ss (GOFLAGS=%s, load %s)\n' "$(date -u +%FT%TZ)" "$module" "$version" "$took" \
        "$GOFLAGS" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$TOOLS/build-times.txt"
}

# The Kubernetes JSON schemas, from the kubernetes-validate wheel on PyPI (pinned); only the
# v$K8S_VERSION-local-strict directory is unpacked (~5 MB). Kinds are laid out as
# {kind}-{group}-{version}.json (kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}) with $refs
# into _definitions.json beside them.
k8s_schemas() {
    local dir=$SCHEMAS/v$K8S_VERSION-local-strict stamp=$SCHEMAS/.version
    if [[ -f $dir/deployment-apps-v1.json && -f $stamp && $(<"$stamp") == "$SCHEMA_PKG==$SCHEMA_PKG_VERSION local-refs" ]]; then
        printf '%-12s %s==%s, v%s-local-strict (cached)\n' schemas "$SCHEMA_PKG" "$SCHEMA_PKG_VERSION" "$K8S_VERSION"
        return 0
    fi
    local t0; t0=$(secs)
    mkdir -p "$TOOLS/pip" "$SCHEMAS"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TOOLS/pip" \
        "$SCHEMA_PKG==$SCHEMA_PKG_VERSION" || return 1
    python3 - "$TOOLS/pip" "$SCHEMA_PKG_VERSION" "$SCHEMAS" "v$K8S_VERSION-local-strict" <<'PY' || return 1
import glob, json, os, sys, zipfile
pipdir, version, out, sub = sys.argv[1:]
whl = glob.glob(os.path.join(pipdir, "kubernetes_validate-%s-*.whl" % version))[0]
prefix = "kubernetes_validate/kubernetes-json-schema/%s/" % sub
n = 0
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            # The files carry "$id": "https://kubernetes.io/api/..." and "$ref":
            # "/api/_definitions.json#/$defs/...", which resolve to kubernetes.io (no network
            # here: kubeconform then reports "could not find schema"). Make the refs relative
            # to the file and drop $id, so they resolve to _definitions.json beside it.
            doc = json.loads(z.read(name).decode().replace('"/api/_definitions.json#', '"_definitions.json#'))
            doc.pop("$id", None)
            dest = os.path.join(out, sub, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as f:
                json.dump(doc, f)
            n += 1
if n < 100:
    sys.exit("only %d schemas under %s in %s" % (n, prefix, whl))
print("%d schemas unpacked" % n)
PY
    echo "$SCHEMA_PKG==$SCHEMA_PKG_VERSION local-refs" >"$stamp"
    printf '%-12s %s==%s, v%s-local-strict in %ss\n' schemas "$SCHEMA_PKG" "$SCHEMA_PKG_VERSION" "$K8S_VERSION" "$(elapsed "$t0")"
}

step "tools (pinned, cached under target/tools/; GOFLAGS=$GOFLAGS, -trimpath; $(nproc) cores)"
tools_ok=1
# Like helm's Makefile: its version, and the Kubernetes version `helm template` assumes (from
# its client-go, v0.37 -> 1.37; without these -X flags it would claim 1.20 and refuse the
# chart's kubeVersion constraint).
HELM_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
go_tool helm "$HELM_MODULE" "$HELM_VERSION" "$HELM_LDFLAGS" || tools_ok=0
go_tool kubeconform "$KUBECONFORM_MODULE" "$KUBECONFORM_VERSION" || tools_ok=0
go_tool kustomize "$KUSTOMIZE_MODULE" "$KUSTOMIZE_VERSION" || tools_ok=0
k8s_schemas || tools_ok=0
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml || tools_ok=0
# The Go build cache (~0.8 GB) is only needed to build them again: dropped, as tests/apiserver/kube-up.sh
# does, unless PACKAGING_KEEP_GOCACHE=1. The module cache (target/tools/go) stays.
if ((tools_ok)) && [[ ${PACKAGING_KEEP_GOCACHE:-} != 1 && -d $GOCACHE ]]; then
    go clean -cache 2>/dev/null; rm -rf "$GOCACHE"
fi
if [[ ${1:-} == --tools-only ]]; then
    ((tools_ok)) || exit 1
    exit 0
fi
if ((tools_ok)); then ok "tools installed: helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, kustomize $KUSTOMIZE_VERSION, $SCHEMA_PKG==$SCHEMA_PKG_VERSION"
else bad "tools installed"; finish; fi
HELM=$BIN/helm KUBECONFORM=$BIN/kubeconform KUSTOMIZE=$BIN/kustomize
export HELM

# kubeconform, offline: built-in kinds from the unpacked schemas, VirtualMachineIdentity from a
# JSON schema converted from the CRD's openAPIV3Schema. No -ignore-missing-schemas: a kind or
# apiVersion without a schema fails; only ServiceMonitor (prometheus-operator's CRD, which is not
# on any registry here) is skipped by name.
CRD_SCHEMAS=$WORK/crd-schemas
python3 - "crds/$CRD_FILE" "crds/$POLICY_CRD_FILE" "$CRD_SCHEMAS" <<'PY'
import json, os, sys, yaml
out = sys.argv[-1]
os.makedirs(out, exist_ok=True)

def strict(s):
    """OpenAPI v3 (structural) -> JSON schema; objects reject unknown fields like the API server."""
    if not isinstance(s, dict):
        return s
    s = {k: strict(v) if isinstance(v, dict) else ([strict(i) for i in v] if isinstance(v, list) else v)
         for k, v in s.items()}
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    if s.get("type") == "object" and "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in s:
        s["additionalProperties"] = False
    return s

for f in sys.argv[1:-1]:
  crd = yaml.safe_load(open(f))
  group = crd["spec"]["group"]
  kind = crd["spec"]["names"]["kind"]
  for v in crd["spec"]["versions"]:
    schema = strict(v["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": ["%s/%s" % (group, v["name"])]}
    props["kind"] = {"type": "string", "enum": [kind]}
    props["metadata"] = {"type": "object"}
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    name = "%s-%s-%s.json" % (kind.lower(), group.split(".")[0], v["name"])
    json.dump(schema, open(os.path.join(out, name), "w"), indent=1)
PY
KC_ARGS=(-strict -summary -kubernetes-version "$K8S_VERSION" -skip ServiceMonitor,PrometheusRule,PodMonitor
    -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json")
kubeconform() { "$KUBECONFORM" "${KC_ARGS[@]}" "$@"; }

# ---------------------------------------------------------------- chart
step "Helm chart: $CHART"
check "chart crds/ is identical to crds/$CRD_FILE (fix: cp crds/$CRD_FILE $CHART/crds/)" cmp "$CHART/crds/$CRD_FILE" "crds/$CRD_FILE"
check "chart crds/ is identical to crds/$POLICY_CRD_FILE (fix: cp crds/$POLICY_CRD_FILE $CHART/crds/)" cmp "$CHART/crds/$POLICY_CRD_FILE" "crds/$POLICY_CRD_FILE"
for f in "$CHART"/ci/*.yaml; do
    check "helm lint --strict -f ${f#"$CHART"/}" "$HELM" lint --strict "$CHART" -f "$f"
done
check_fails "helm lint with the default values fails: workloadIdentity needs azure.clientId" \
    "clientId" "$HELM" lint "$CHART"

step "values.schema.json refuses bad values (helm lint and helm template must both fail)"
# file -> text the error must contain (the field it names)
declare -A BAD=(
    [replicas-zero.yaml]="replicas"
    [auth-unknown.yaml]="auth"
    [workload-identity-no-client-id.yaml]="clientId"
    [log-format-unknown.yaml]="logFormat"
    [image-tag-number.yaml]="tag"
    [resources-not-object.yaml]="resources"
    [unknown-key.yaml]="replica"
    [client-secret-no-secret.yaml]="secretName"
    [two-replicas-no-leader-election.yaml]="/replicas"
    [namespace-credentials-unknown.yaml]="mode"
    [network-policy-cidr-not-cidr.yaml]="cidrs"
    [azure-monitor-kind-unknown.yaml]="kind"
)
for f in $(printf '%s\n' "${!BAD[@]}" | sort); do
    [[ -f $CHART/ci/bad/$f ]] || { bad "ci/bad/$f exists"; continue; }
    check_fails "helm lint refuses ci/bad/$f" "${BAD[$f]}" "$HELM" lint "$CHART" -f "$CHART/ci/bad/$f"
    check_fails "helm template refuses ci/bad/$f" "${BAD[$f]}" "$HELM" template t "$CHART" -f "$CHART/ci/bad/$f"
done
extra=$(comm -13 <(printf '%s\n' "${!BAD[@]}" | sort) <(ls "$CHART/ci/bad" | sort))
[[ -z $extra ]] && ok "every ci/bad/ file is asserted" || bad "ci/bad/ files without an expectation: $extra"

step "helm template | kubeconform (Kubernetes $K8S_VERSION schemas, -strict, offline)"
for f in "$CHART"/ci/*.yaml; do
    name=$(basename "$f" .yaml)
    out=$WORK/render-$name.yaml
    if "$HELM" template vmidentity "$CHART" --namespace vmidentity-system --include-crds -f "$f" >"$out" 2>"$out.err"; then
        check "kubeconform: helm template -f ci/$name.yaml" kubeconform "$out"
    else
        bad "helm template -f ci/$name.yaml"; sed 's/^/     | /' "$out.err"
    fi
done
check "kubeconform validates the examples against the CRD's schema (examples/*.yaml)" \
    kubeconform examples/*.yaml
check "kubeconform validates the example policies against the policy CRD's schema (examples/policies/)" \
    kubeconform examples/policies/*.yaml
printf 'apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata: {name: x, namespace: y}\nspec:\n  target: /subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v\n  sytemAssigned: true\n' >"$WORK/typo.yaml"
check_fails "kubeconform refuses an object with an unknown spec field (the CRD schema is strict)" \
    "additional properties 'sytemAssigned' not allowed" kubeconform "$WORK/typo.yaml"
printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicass: 2\n  selector: {}\n  template: {}\n' >"$WORK/typo-deploy.yaml"
check_fails "kubeconform refuses a Deployment with an unknown field (the Kubernetes schemas are used, strict)" \
    "additional properties 'replicass' not allowed" kubeconform "$WORK/typo-deploy.yaml"

step "what the chart renders (assertions on helm template output)"
python3 - "$WORK" >"$WORK/render-assertions.log" 2>&1 <<'PY'
import json, sys, yaml
work = sys.argv[1]
failures = 0
def load(name):
    docs = [d for d in yaml.safe_load_all(open("%s/render-%s.yaml" % (work, name))) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}
def expect(cond, desc):
    global failures
    print(("ok   - " if cond else "FAIL - ") + desc)
    failures += 0 if cond else 1
def env(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}

r = load("workload-identity-values")
d = r[("Deployment", "vmidentity")]
pod = d["spec"]["template"]
c = pod["spec"]["containers"][0]
e = env(c)
sc, psc = c["securityContext"], pod["spec"]["securityContext"]
expect(d["spec"]["replicas"] == 2, "default: 2 replicas")
expect(c["image"] == "ghcr.io/vmidentity/vmidentity:0.1.0", "image ghcr.io/vmidentity/vmidentity:<appVersion>")
expect(c["args"] == ["controller", "--lease-name=vmidentity-leader"], "args: controller --lease-name=<release>-leader")
expect(sc["runAsNonRoot"] and sc["runAsUser"] == 65532 and sc["readOnlyRootFilesystem"]
       and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
       and sc["seccompProfile"]["type"] == "RuntimeDefault" and psc["runAsNonRoot"], "restricted security context")
expect(c["resources"]["requests"] and c["resources"]["limits"], "resource requests and limits")
expect(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
       and c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
       and c["ports"] == [{"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}], "probes on port 8080")
expect(e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
       and e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, "POD_NAME/POD_NAMESPACE from the downward API")
expect(e["VMIDENTITY_AUTH"] == "workloadIdentity" and e["AZURE_CLIENT_ID"] == "11111111-2222-3333-4444-555555555555"
       and e["AZURE_TENANT_ID"] == "66666666-7777-8888-9999-000000000000", "VMIDENTITY_AUTH, AZURE_CLIENT_ID, AZURE_TENANT_ID")
expect(all(k in e for k in ["VMIDENTITY_ARM_ENDPOINT", "VMIDENTITY_GRAPH_ENDPOINT", "VMIDENTITY_RESYNC_SECONDS",
       "VMIDENTITY_CONCURRENCY", "RUST_LOG", "VMIDENTITY_METRICS_ADDR"]) and e["VMIDENTITY_LOG_FORMAT"] == "json"
       and e["VMIDENTITY_RESYNC_MODE"] == "resource-graph" and e["VMIDENTITY_METRICS_ADDR"] == "0.0.0.0:8080"
       and "VMIDENTITY_NAMESPACE" not in e and "AZURE_CLIENT_SECRET" not in e, "controller env")
expect(pod["metadata"]["labels"].get("azure.workload.identity/use") == "true", "pod label azure.workload.identity/use")
sa = r[("ServiceAccount", "vmidentity")]
expect(sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "11111111-2222-3333-4444-555555555555",
       "ServiceAccount annotation azure.workload.identity/client-id")
cr = r[("ClusterRole", "vmidentity")]["rules"]
expect(cr == [
    {"apiGroups": ["vmidentity.dev"], "resources": ["virtualmachineidentities"], "verbs": ["get", "list", "watch", "patch", "update"]},
    {"apiGroups": ["vmidentity.dev"], "resources": ["virtualmachineidentities/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}], "ClusterRole: least privilege")
crb = r[("ClusterRoleBinding", "vmidentity")]
expect(crb["subjects"] == [{"kind": "ServiceAccount", "name": "vmidentity", "namespace": "vmidentity-system"}], "ClusterRoleBinding")
role = r[("Role", "vmidentity-leader-election")]
expect(role["metadata"]["namespace"] == "vmidentity-system"
       and {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "create", "update"}
       and all(rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"] for rule in role["rules"]),
       "Role: leases get/create/update in the release namespace")
expect(("RoleBinding", "vmidentity-leader-election") in r, "RoleBinding for the Role")
svc = r[("Service", "vmidentity-metrics")]
expect(svc["spec"]["ports"][0]["name"] == "http-metrics" and svc["spec"]["ports"][0]["port"] == 8080, "metrics Service port 8080 http-metrics")
pdb = r.get(("PodDisruptionBudget", "vmidentity"))
expect(pdb is not None and pdb["spec"]["minAvailable"] == 1, "PodDisruptionBudget minAvailable 1 (replicas 2)")
expect(("CustomResourceDefinition", "virtualmachineidentities.vmidentity.dev") in r, "--include-crds renders the CRD")
expect(("CustomResourceDefinition", "virtualmachineidentitypolicies.vmidentity.dev") in r, "--include-crds renders the policy CRD")
pr = r[("ClusterRole", "vmidentity-policy-reader")]["rules"]
expect(pr == [
    {"apiGroups": ["vmidentity.dev"], "resources": ["virtualmachineidentitypolicies"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}], "ClusterRole policy-reader: read-only")
expect(("ClusterRoleBinding", "vmidentity-policy-reader") in r, "ClusterRoleBinding for the policy reader")
expect(("ClusterRole", "vmidentity-credential-reader") not in r and e["VMIDENTITY_NAMESPACE_CREDENTIALS"] == "off",
       "namespace credentials off by default: no Secret access")
pol = r.get(("VirtualMachineIdentityPolicy", "vmidentity-default"))
expect(pol is not None and pol["spec"]["namespaces"]["selector"] == {"matchLabels": {"vmidentity.dev/enabled": "true"}}
       and not any(pol["spec"]["targets"].values()) and pol["spec"]["allowExactMode"] is False
       and pol["spec"]["allowDisableSystemAssigned"] is False and "allowPrivilegedRoles" not in pol["spec"],
       "starting policy: labelled namespaces, nothing allowed until edited")
vap = r.get(("ValidatingAdmissionPolicy", "vmidentity-guardrails"))
vapb = r.get(("ValidatingAdmissionPolicyBinding", "vmidentity-guardrails"))
expect(vap is not None and vap["spec"]["paramKind"] == {"apiVersion": "vmidentity.dev/v1alpha1", "kind": "VirtualMachineIdentityPolicy"}
       and vap["spec"]["failurePolicy"] == "Fail", "ValidatingAdmissionPolicy with the policy as its parameter, failing closed")
expect(vapb is not None and vapb["spec"]["validationActions"] == ["Deny"]
       and vapb["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Deny"}, "binding: every policy, Deny")
expect(not any(k == "ServiceMonitor" for k, _ in r), "no ServiceMonitor by default")
expect(all(o["metadata"].get("namespace") in (None, "vmidentity-system") for o in r.values()), "namespaced objects in the release namespace")

r = load("client-secret-values")
c = r[("Deployment", "vmidentity")]["spec"]["template"]["spec"]["containers"][0]
e = env(c)
expect(e["VMIDENTITY_AUTH"] == "clientSecret" and e["AZURE_CLIENT_SECRET"] == {"secretKeyRef": {"name": "vmidentity-sp", "key": "client-secret"}},
       "clientSecret: AZURE_CLIENT_SECRET from the Secret")
expect("azure.workload.identity/use" not in r[("Deployment", "vmidentity")]["spec"]["template"]["metadata"]["labels"]
       and "azure.workload.identity/client-id" not in (r[("ServiceAccount", "vmidentity")]["metadata"].get("annotations") or {}),
       "clientSecret: no workload identity label/annotation")
expect(e["VMIDENTITY_NAMESPACE"] == "team-web" and e["VMIDENTITY_LOG_FORMAT"] == "text", "watchNamespace -> VMIDENTITY_NAMESPACE")
cred = r.get(("ClusterRole", "vmidentity-credential-reader"))
expect(e["VMIDENTITY_NAMESPACE_CREDENTIALS"] == "required" and e["VMIDENTITY_NAMESPACE_CREDENTIAL_SECRET"] == "vmidentity-credential"
       and cred is not None and cred["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
       "resourceNames": ["vmidentity-credential"], "verbs": ["get"]}]
       and ("ClusterRoleBinding", "vmidentity-credential-reader") in r,
       "namespace credentials: env, and get of the one Secret name only")
rb = r.get(("RoleBinding", "vmidentity"))
expect(rb is not None and rb["metadata"]["namespace"] == "team-web" and rb["roleRef"]["kind"] == "ClusterRole"
       and ("ClusterRoleBinding", "vmidentity") not in r, "watchNamespace: the ClusterRole is bound in that namespace only")
expect(("PodDisruptionBudget", "vmidentity") not in r, "replicas 1: no PodDisruptionBudget")
sm = r.get(("ServiceMonitor", "vmidentity"))
expect(sm is not None and sm["spec"]["endpoints"][0]["port"] == "http-metrics", "ServiceMonitor when enabled")
pr = r.get(("PrometheusRule", "vmidentity"))
src = yaml.safe_load(open("charts/vmidentity/files/prometheus-rules.yaml"))
expect(pr is not None and pr["metadata"]["labels"].get("release") == "kube-prometheus-stack"
       and [x["alert"] for g in pr["spec"]["groups"] for x in g["rules"]] == [x["alert"] for g in src["groups"] for x in g["rules"]]
       and "job=\"vmidentity\"" not in yaml.safe_dump(pr) and "job=\"vmidentity-metrics\"" in yaml.safe_dump(pr),
       "PrometheusRule when enabled: every alert of files/prometheus-rules.yaml, on the ServiceMonitor's job")
yaml.safe_dump(pr["spec"] if pr else {}, open(work + "/prometheusrule-groups.yaml", "w"))
expect(not any(k == "PrometheusRule" for k, _ in load("workload-identity-values")), "no PrometheusRule by default")
# Hardening, in every rendered variant: the restricted Pod Security Standard's container and
# pod settings (read-only root FS, no privilege escalation, every capability dropped, seccomp
# RuntimeDefault, non-root), no writable volume, no host namespaces, spread over nodes and zones.
for variant in ("workload-identity-values", "client-secret-values", "managed-identity-values", "static-values"):
    rv = load(variant)
    ps = rv[("Deployment", "vmidentity")]["spec"]["template"]["spec"]
    for ctr in ps["containers"] + ps.get("initContainers", []):
        csc = ctr.get("securityContext", {})
        expect(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
               and csc.get("privileged") is False and csc.get("capabilities", {}).get("drop") == ["ALL"]
               and not csc.get("capabilities", {}).get("add")
               and csc.get("seccompProfile", {}).get("type") == "RuntimeDefault" and csc.get("runAsNonRoot") is True,
               "%s: container %s read-only root FS, no capabilities, seccomp RuntimeDefault, non-root" % (variant, ctr["name"]))
    expect(ps["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault" and ps["securityContext"].get("runAsNonRoot") is True
           and not any(ps.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")) and not ps.get("volumes"),
           "%s: pod seccomp RuntimeDefault, non-root, no host namespaces, no volumes" % variant)
    tsc = ps.get("topologySpreadConstraints", [])
    sel = {"app.kubernetes.io/name": "vmidentity", "app.kubernetes.io/instance": "vmidentity"}
    if variant == "managed-identity-values":
        expect(tsc == [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"team": "platform"}}}], "topologySpreadConstraints: an entry's own labelSelector is kept")
    else:
        expect([(t["topologyKey"], t["whenUnsatisfiable"], t["labelSelector"]["matchLabels"]) for t in tsc]
               == [("kubernetes.io/hostname", "ScheduleAnyway", sel), ("topology.kubernetes.io/zone", "ScheduleAnyway", sel)],
               "%s: replicas spread over nodes and zones (the chart's selector labels)" % variant)
expect(("NetworkPolicy", "vmidentity") not in load("workload-identity-values"), "no NetworkPolicy by default")
np = load("managed-identity-values")[("NetworkPolicy", "vmidentity")]["spec"]
eg = np["egress"]
expect(np["policyTypes"] == ["Ingress", "Egress"] and np["podSelector"]["matchLabels"] == sel
       and np["ingress"] == [{"ports": [{"port": "http-metrics", "protocol": "TCP"}],
                              "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}],
       "NetworkPolicy: ingress to the metrics port only, from the configured peers")
expect([sorted((p["protocol"], p["port"]) for p in e["ports"]) for e in eg]
       == [[("TCP", 53), ("UDP", 53)], [("TCP", 443)], [("TCP", 443)], [("TCP", 80)]]
       and eg[1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
       and eg[2]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]
       and eg[3]["to"] == [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
       "NetworkPolicy: egress to DNS, the API server, HTTPS to Azure and (managedIdentity) IMDS only")
np = load("static-values")[("NetworkPolicy", "vmidentity")]["spec"]
expect(len(np["egress"]) == 3 and np["ingress"] == [{"ports": [{"port": "http-metrics", "protocol": "TCP"}]}],
       "NetworkPolicy without managedIdentity: no IMDS egress; metrics port open to any peer by default")
am = load("static-values").get(("ServiceMonitor", "vmidentity"))
expect(am is not None and am["apiVersion"] == "azmonitoring.coreos.com/v1" and am["spec"]["endpoints"][0]["port"] == "http-metrics"
       and am["spec"]["labelLimit"] == 63, "Azure Managed Prometheus ServiceMonitor (azmonitoring.coreos.com/v1)")
pm = load("workload-identity-values").get(("PodMonitor", "vmidentity"))
expect(pm is None, "no Azure Managed Prometheus monitor by default")
cm = r.get(("ConfigMap", "vmidentity-dashboard"))
dash = json.load(open("charts/vmidentity/files/dashboards/vmidentity.json"))
expect(cm is not None and cm["metadata"]["labels"].get("grafana_dashboard") == "1" and cm["metadata"]["namespace"] == "monitoring"
       and cm["metadata"].get("annotations") == {"grafana_folder": "Azure"} and json.loads(cm["data"]["vmidentity.json"]) == dash,
       "Grafana dashboard ConfigMap when enabled: sidecar label, the repository's dashboard JSON unchanged")
expect(not any(k == "ConfigMap" for k, _ in load("workload-identity-values")), "no dashboard ConfigMap by default")

r = load("managed-identity-values")
d = r[("Deployment", "vmidentity")]
c = d["spec"]["template"]["spec"]["containers"][0]
expect(env(c)["VMIDENTITY_AUTH"] == "managedIdentity" and "AZURE_CLIENT_ID" not in env(c), "managedIdentity (IMDS), no client ID")
expect(c["image"].endswith("@sha256:" + "0" * 64), "image digest")
expect(r[("PodDisruptionBudget", "vmidentity")]["spec"]["minAvailable"] == "50%", "PDB minAvailable percentage")

r = load("static-values")
c = r[("Deployment", "vmidentity")]["spec"]["template"]["spec"]["containers"][0]
e = env(c)
expect(e["VMIDENTITY_AUTH"] == "static" and e["AZURE_ACCESS_TOKEN"] == {"secretKeyRef": {"name": "vmidentity-token", "key": "token"}}
       and e["AZURE_GRAPH_ACCESS_TOKEN"] == {"secretKeyRef": {"name": "vmidentity-token", "key": "graph-token"}}, "static: tokens from the Secret")
expect(c["args"] == ["controller", "--no-leader-election"] and ("Role", "vmidentity-leader-election") not in r,
       "leader election off: --no-leader-election, no Lease Role")
sys.exit(1 if failures else 0)
PY
rc=$?
cat "$WORK/render-assertions.log"
pass=$((pass + $(grep -c '^ok ' "$WORK/render-assertions.log")))
fail=$((fail + $(grep -c '^FAIL ' "$WORK/render-assertions.log")))
((rc == 0)) || grep -q '^FAIL ' "$WORK/render-assertions.log" || bad "chart render assertions (the script itself failed)"
if command -v promtool >/dev/null; then
    check "promtool check rules: the chart's rendered PrometheusRule groups" promtool check rules "$WORK/prometheusrule-groups.yaml"
else
    bad "promtool is installed (apt-get install prometheus) for the PrometheusRule check"
fi

# helm template does not render NOTES.txt: render it from a copy of the chart, through tpl.
notes_chart=$WORK/notes-chart
rm -rf "$notes_chart"; mkdir -p "$notes_chart"
cp -r "$CHART" "$notes_chart/"
cp "$CHART/templates/NOTES.txt" "$notes_chart/vmidentity/notes.txt"
printf '{{- $n := tpl (.Files.Get "notes.txt") . }}\nnotes: {{ $n | toJson }}\n' >"$notes_chart/vmidentity/templates/zz-notes.yaml"
for f in "$CHART"/ci/*.yaml; do
    name=$(basename "$f" .yaml)
    mode=$(python3 -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])).get("azure") or {}).get("auth", "workloadIdentity"))' "$f")
    check "NOTES.txt renders with ci/$name.yaml (names the auth mode $mode)" bash -c \
        '"$1" template vmidentity "$2" -n vmidentity-system -f "$3" --show-only templates/zz-notes.yaml >"$5" && grep -q "Azure authentication: $4" "$5"' \
        _ "$HELM" "$notes_chart/vmidentity" "$f" "$mode" "$WORK/notes-$name.txt"
done

# ---------------------------------------------------------------- manifests
step "manifests/ (kustomize base) is generated from the chart and up to date"
fresh=$WORK/manifests-fresh
rm -rf "$fresh"
if scripts/gen-manifests.sh "$fresh" >"$WORK/gen-manifests.log" 2>&1; then
    check "manifests/ == scripts/gen-manifests.sh output (run scripts/gen-manifests.sh if not)" diff -ru "$fresh" manifests
else
    bad "scripts/gen-manifests.sh"; sed 's/^/     | /' "$WORK/gen-manifests.log"
fi
if "$KUSTOMIZE" build manifests >"$WORK/kustomize.yaml" 2>"$WORK/kustomize.err"; then
    ok "kustomize build manifests/"
    check "kubeconform: kustomize build manifests/" kubeconform "$WORK/kustomize.yaml"
    check "kustomize base holds Namespace, CRD, RBAC, ServiceAccount, Deployment, Service, PDB" python3 - "$WORK/kustomize.yaml" <<'PY'
import sys, yaml
kinds = {(d["kind"], d["metadata"].get("namespace")) for d in yaml.safe_load_all(open(sys.argv[1])) if d}
want = {("Namespace", None), ("CustomResourceDefinition", None), ("ClusterRole", None), ("ClusterRoleBinding", None),
        ("Role", "vmidentity-system"), ("RoleBinding", "vmidentity-system"), ("ServiceAccount", "vmidentity-system"),
        ("Deployment", "vmidentity-system"), ("Service", "vmidentity-system"), ("PodDisruptionBudget", "vmidentity-system")}
missing = want - kinds
print("missing:", missing) if missing else None
sys.exit(1 if missing else 0)
PY
    # One `kubectl apply -k manifests/` must work on a fresh cluster: kubectl sends a custom
    # resource before the CRD it comes with is established and fails ("ensure CRDs are
    # installed first"; kubernetes/kubectl#1179), so the base holds no custom resource of its
    # own CRDs; those are in manifests/policy/. scripts/check-apply-k.sh runs both on a fresh
    # real API server.
    check "kustomize base holds no custom resource of the CRDs it installs (one apply -k on a fresh cluster); manifests/policy/ holds the starting policy" python3 - "$WORK/kustomize.yaml" manifests/policy/policy.yaml <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {(c["spec"]["group"], c["spec"]["names"]["kind"]) for c in docs if c["kind"] == "CustomResourceDefinition"}
crs = [d["kind"] + "/" + d["metadata"]["name"] for d in docs
       if (d["apiVersion"].split("/")[0], d["kind"]) in kinds]
print("custom resources in the base:", crs) if crs else None
pol = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
ok = not crs and [d["kind"] for d in pol] == ["VirtualMachineIdentityPolicy"]
sys.exit(0 if ok else 1)
PY
else
    bad "kustomize build manifests/"; sed 's/^/     | /' "$WORK/kustomize.err"
fi
# The overlay the README shows: set the controller's client ID with two strategic merge patches.
overlay=$WORK/overlay
rm -rf "$overlay"; mkdir -p "$overlay"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../manifests
patches:
  - patch: |-
      apiVersion: v1
      kind: ServiceAccount
      metadata:
        name: vmidentity
        namespace: vmidentity-system
        annotations:
          azure.workload.identity/client-id: aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: vmidentity
        namespace: vmidentity-system
      spec:
        template:
          spec:
            containers:
              - name: controller
                env:
                  - name: AZURE_CLIENT_ID
                    value: aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee
                  - name: AZURE_TENANT_ID
                    value: ffffffff-0000-1111-2222-333333333333
EOF
check "the README's kustomize overlay sets the client ID (ServiceAccount annotation and env), nothing else changes" \
    bash -c '"$1" build "$2" >"$2/out.yaml" && python3 - "$2/out.yaml" <<'"'"'PY'"'"'
import sys, yaml
docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
sa = docs[("ServiceAccount", "vmidentity")]["metadata"]["annotations"]["azure.workload.identity/client-id"]
env = [e for e in docs[("Deployment", "vmidentity")]["spec"]["template"]["spec"]["containers"][0]["env"]]
names = [e["name"] for e in env]
vals = {e["name"]: e.get("value") for e in env}
assert sa == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", sa
assert vals["AZURE_CLIENT_ID"] == sa and vals["AZURE_TENANT_ID"] == "ffffffff-0000-1111-2222-333333333333", vals
assert len(names) == len(set(names)) and "POD_NAME" in names and "VMIDENTITY_LOG_FORMAT" in names, names
PY' _ "$KUSTOMIZE" "$overlay"

# ---------------------------------------------------------------- Dockerfile
step "Dockerfile (static checks; no Docker here)"
check "Dockerfile: builder (rust on \$BUILDPLATFORM) and distroless/static final stage; builds -p vmidentity --no-default-features for $MUSL_TARGET (cargo build) and $ARM_TARGET (cargo zigbuild) by TARGETARCH; copies that binary; non-root; ENTRYPOINT is the [[bin]] name" \
    python3 - Dockerfile controller/Cargo.toml "$MUSL_TARGET" "$ARM_TARGET" <<'PY'
import json, re, shlex, sys, tomllib
dockerfile, cargo_toml, target, arm_target = sys.argv[1:]
text = re.sub(r"\\\n", " ", open(dockerfile).read())
lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
stages, cur = [], None
for l in lines:
    instr, _, rest = l.partition(" ")
    instr = instr.upper()
    if instr == "FROM":
        m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", rest.strip(), re.I)
        cur = {"image": m.group(1), "name": m.group(2), "instr": []}
        stages.append(cur)
    else:
        cur["instr"].append((instr, rest.strip()))
errors = []
def need(cond, msg):
    if not cond: errors.append(msg)
bin_name = tomllib.load(open(cargo_toml, "rb"))["bin"][0]["name"]
need(len(stages) >= 2, "multi-stage: at least a builder and a final stage")
builder, final = stages[0], stages[-1]
need(re.match(r"(docker\.io/(library/)?)?rust:1\.\d+(\.\d+)?-(bookworm|trixie)$", builder["image"]), "builder is rust:1.x-bookworm: " + builder["image"])
runs = " ; ".join(r for i, r in builder["instr"] if i == "RUN")
need("musl-tools" in runs, "builder installs musl-tools")
rustup = re.search(r"rustup target add ([^;&|]*)", runs)
need(rustup and {target, arm_target} <= set(rustup.group(1).split()), "builder adds the %s and %s targets" % (target, arm_target))
need(re.search(r"--platform=\$BUILDPLATFORM", open(dockerfile).read()) and ("ARG", "TARGETARCH") in builder["instr"],
     "builder runs on $BUILDPLATFORM and reads ARG TARGETARCH (one builder cross-compiles for each platform)")
need(re.search(r"cargo-zigbuild==\S+", runs) and re.search(r"ziglang==\S+", runs), "builder pins cargo-zigbuild and ziglang (PyPI)")
workdir = [r for i, r in builder["instr"] if i == "WORKDIR"]
wd = workdir[-1].rstrip("/") if workdir else ""
for arch, tgt, cmd, strip in (("amd64", target, "cargo build", "strip"), ("arm64", arm_target, "cargo zigbuild", "aarch64-linux-gnu-strip")):
    branch = re.search(r"\b%s\)([^;]*(?:;(?!;)[^;]*)*);;" % arch, runs)
    need(branch, "a case branch for TARGETARCH=%s" % arch)
    if not branch:
        continue
    b = branch.group(1)
    build = re.search(r"%s[^;&|]*" % cmd, b)
    need(build, "%s: builder runs %s" % (arch, cmd))
    if build:
        args = shlex.split(build.group(0))
        need("--release" in args and "--locked" in args, "%s --release --locked" % cmd)
        need("-p" in args and args[args.index("-p") + 1] == "vmidentity", "%s -p vmidentity" % cmd)
        need("--target" in args and args[args.index("--target") + 1] == tgt, "%s --target %s" % (cmd, tgt))
        need("--no-default-features" in args, "%s --no-default-features (the image does not link the ARM simulator)" % cmd)
    produced_arch = "%s/target/%s/release/%s" % (wd, tgt, bin_name)
    need(re.search(r"(^|\s)%s --strip-debug %s\b" % (re.escape(strip), re.escape(produced_arch)), b),
         "%s: strips the debug info of the binary (%s --strip-debug)" % (arch, strip))
    need(re.search(r"cp %s /%s\b" % (re.escape(produced_arch), bin_name), b), "%s: copies %s to /%s" % (arch, produced_arch, bin_name))
need(re.search(r"\*\)\s*echo[^;]*;\s*exit 1\s*;;", runs), "any other TARGETARCH fails the build")
produced = "/" + bin_name
need(re.match(r"(gcr\.io/distroless/static(-debian\d+)?(:\S+)?|scratch)$", final["image"]), "final stage is distroless/static or scratch: " + final["image"])
copies = [r for i, r in final["instr"] if i == "COPY"]
need(len(copies) == 1, "final stage copies exactly one thing (the binary)")
for c in copies:
    a = shlex.split(c)
    frm = [x for x in a if x.startswith("--from=")]
    need(frm and frm[0].split("=", 1)[1] in (builder["name"], "0"), "COPY --from=<builder>")
    src, dst = [x for x in a if not x.startswith("--")]
    need(src == produced, "final stage copies %s (what the builder produces), not %s" % (produced, src))
    need(dst == "/" + bin_name, "binary at /" + bin_name)
user = [r for i, r in final["instr"] if i == "USER"]
need(user and user[-1].split(":")[0] not in ("0", "root") and user[-1].split(":")[0].isdigit(), "USER is a numeric non-root user: %s" % user)
need(user and user[-1] == "65532:65532", "USER 65532:65532 (the chart's runAsUser)")
ep = [json.loads(r) for i, r in final["instr"] if i == "ENTRYPOINT"]
need(ep and ep[-1] == ["/" + bin_name], "ENTRYPOINT [\"/%s\"] ([[bin]] name in controller/Cargo.toml)" % bin_name)
cmd = [json.loads(r) for i, r in final["instr"] if i == "CMD"]
need(cmd and cmd[-1] == ["controller"], "CMD [\"controller\"]")
for e in errors: print("Dockerfile:", e)
sys.exit(1 if errors else 0)
PY
check ".dockerignore leaves out target/ and .git" bash -c 'grep -qxE "/?target/?" .dockerignore && grep -qxE "/?\.git/?" .dockerignore'

# ---------------------------------------------------------------- API server
step "the chart's CRDs, its starting policy and an example object on a real API server (tests/apiserver/kube-up.sh)"
if [[ ${SKIP_APISERVER:-} == 1 ]]; then
    echo "skipped (SKIP_APISERVER=1)"
else
    AS_DIR=${KAS_DIR:-$ROOT/target/kube-apiserver}
    was_up=0
    if [[ -f $AS_DIR/ports.env && -f $AS_DIR/pki/admin.crt ]]; then
        # shellcheck disable=SC1091
        (source "$AS_DIR/ports.env"; curl -sS --max-time 3 --cacert "$AS_DIR/pki/ca.crt" --cert "$AS_DIR/pki/admin.crt" \
            --key "$AS_DIR/pki/admin.key" "https://127.0.0.1:$KAS_PORT/healthz" 2>/dev/null | grep -qx ok) && was_up=1
    fi
    if tests/apiserver/kube-up.sh >/dev/null 2>"$WORK/apiserver-up.log"; then
        ok "tests/apiserver/kube-up.sh ($( ((was_up)) && echo 'already running' || echo started))"
        # shellcheck disable=SC1091
        source "$AS_DIR/ports.env"
        API=https://127.0.0.1:$KAS_PORT
        PKI=$AS_DIR/pki
        k() { curl -sS --max-time 20 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"; }
        # req METHOD PATH [curl args]: sets CODE, BODY
        req() {
            local m=$1 p=$2; shift 2
            CODE=$(k -o "$WORK/resp.json" -w '%{http_code}' -X "$m" "$@" "$API$p") || CODE=000
            BODY=$(tr -d ' \n\t' <"$WORK/resp.json")
        }
        # The CRD exactly as the chart installs it (helm template --include-crds), as JSON.
        "$HELM" template vmidentity "$CHART" --namespace vmidentity-system --include-crds \
            --set azure.clientId=00000000-0000-0000-0000-000000000000 >"$WORK/render-apiserver.yaml"
        python3 - "$WORK/render-apiserver.yaml" examples/vm-web.yaml "$WORK" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
assert len(crds) == 2, sorted(crds)
json.dump(crds["virtualmachineidentities.vmidentity.dev"], open(sys.argv[3] + "/crd.json", "w"))
json.dump(crds["virtualmachineidentitypolicies.vmidentity.dev"], open(sys.argv[3] + "/policy-crd.json", "w"))
pol = next(d for d in docs if d["kind"] == "VirtualMachineIdentityPolicy")
pol["metadata"] = {"name": "vmidentity-packaging-check"}
json.dump(pol, open(sys.argv[3] + "/policy.json", "w"))
obj = next(d for d in yaml.safe_load_all(open(sys.argv[2])) if d)
obj["metadata"]["namespace"] = "vmidentity-packaging-check"
json.dump(obj, open(sys.argv[3] + "/example.json", "w"))

PY
        CRDS=/apis/apiextensions.k8s.io/v1/customresourcedefinitions
        CRD_NAME=virtualmachineidentities.vmidentity.dev
        # apply_crd NAME FILE WHAT: server-side apply (forced, like the e2e tests' install):
        # creates it, or applies the chart's version over an existing one, then waits until it
        # is Established. CRDs are left installed (the e2e tests share them).
        apply_crd() {
            req PATCH "$CRDS/$1?fieldManager=vmidentity-packaging&force=true" \
                -H 'Content-Type: application/apply-patch+yaml' --data-binary "@$2"
            if [[ $CODE == 200 || $CODE == 201 ]]; then ok "apply the chart's $3 (HTTP $CODE)"
            else bad "apply the chart's $3 (HTTP $CODE: ${BODY:0:400})"; fi
            for _ in $(seq 150); do
                req GET "$CRDS/$1"
                [[ $BODY == *'"type":"Established","status":"True"'* ]] && break; sleep 0.2
            done
            [[ $BODY == *'"type":"Established","status":"True"'* ]] && ok "$3 Established" || bad "$3 Established"
        }
        apply_crd "$CRD_NAME" "$WORK/crd.json" CRD
        apply_crd virtualmachineidentitypolicies.vmidentity.dev "$WORK/policy-crd.json" "policy CRD"
        POL=/apis/vmidentity.dev/v1alpha1/virtualmachineidentitypolicies
        k -o /dev/null -X DELETE "$API$POL/vmidentity-packaging-check" 2>/dev/null || true
        for _ in $(seq 50); do
            req POST "$POL" -H 'Content-Type: application/json' --data-binary "@$WORK/policy.json"
            [[ $CODE == 404 || $CODE == 503 || $CODE == 409 ]] || break; sleep 0.2
        done
        [[ $CODE == 201 ]] && ok "the chart's starting policy passes the policy CRD's schema (HTTP 201)" \
            || bad "create the chart's starting policy (HTTP $CODE: ${BODY:0:400})"
        k -o /dev/null -X DELETE "$API$POL/vmidentity-packaging-check" 2>/dev/null || true
        # kube-apiserver: the namespace must exist (409 when it does).
        req POST /api/v1/namespaces -H 'Content-Type: application/json' \
            -d '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"vmidentity-packaging-check"}}'
        [[ $CODE == 201 || $CODE == 409 ]] || bad "create namespace vmidentity-packaging-check (HTTP $CODE)"
        OBJ=/apis/vmidentity.dev/v1alpha1/namespaces/vmidentity-packaging-check/virtualmachineidentities
        NAME=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["name"])' "$WORK/example.json")
        k -o /dev/null -X DELETE "$API$OBJ/$NAME" 2>/dev/null || true
        for _ in $(seq 100); do req GET "$OBJ/$NAME"; [[ $CODE == 404 ]] && break; sleep 0.1; done
        for _ in $(seq 50); do  # the new schema may take a moment to be served
            req POST "$OBJ" -H 'Content-Type: application/json' --data-binary "@$WORK/example.json"
            [[ $CODE == 404 || $CODE == 503 ]] || break; sleep 0.2
        done
        if [[ $CODE == 201 ]]; then ok "create examples/vm-web.yaml's first object ($NAME): HTTP 201"
        else bad "create examples/vm-web.yaml's first object (HTTP $CODE: ${BODY:0:400})"; fi
        req GET "$OBJ/$NAME"
        [[ $CODE == 200 && $BODY == *'"systemAssigned":true'* ]] && ok "get it back" || bad "get it back (HTTP $CODE)"
        bad_obj='{"apiVersion":"vmidentity.dev/v1alpha1","kind":"VirtualMachineIdentity","metadata":{"name":"bad-target"},"spec":{"target":"/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/s"}}'
        req POST "$OBJ" -H 'Content-Type: application/json' -d "$bad_obj"
        [[ $CODE == 422 ]] && ok "the CRD refuses a target that is not a VM/VMSS (HTTP 422)" || bad "a bad target must be refused with 422 (HTTP $CODE)"
        [[ $CODE == 201 ]] && k -o /dev/null -X DELETE "$API$OBJ/bad-target"
        req DELETE "$OBJ/$NAME"
        [[ $CODE == 200 ]] && ok "delete it (HTTP 200)" || bad "delete it (HTTP $CODE: ${BODY:0:300})"
        for _ in $(seq 100); do req GET "$OBJ/$NAME"; [[ $CODE == 404 ]] && break; sleep 0.1; done
        if [[ $CODE != 404 ]]; then  # a controller that happened to run may have added its finalizer
            k -o /dev/null -X PATCH -H 'Content-Type: application/merge-patch+json' -d '{"metadata":{"finalizers":null}}' "$API$OBJ/$NAME"
        fi
        ((was_up)) || tests/apiserver/kube-down.sh >/dev/null 2>&1 || true
    else
        bad "tests/apiserver/kube-up.sh"; tail -n 20 "$WORK/apiserver-up.log" | sed 's/^/     | /'
    fi
fi

# ---------------------------------------------------------------- static binary (last: slow)
step "the static binary the Dockerfile builds (cargo build --release --target $MUSL_TARGET)"
if [[ ${SKIP_STATIC_BUILD:-} == 1 ]]; then
    echo "skipped (SKIP_STATIC_BUILD=1)"
    finish
fi
# The exact cargo command of the Dockerfile's builder stage.
BUILD_CMD=$(sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' Dockerfile | grep -o 'cargo build [^&;|]*' | head -n1 | sed 's/ *$//')
echo "Dockerfile: $BUILD_CMD"
if ! command -v musl-gcc >/dev/null; then
    t0=$(secs)
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools; } >"$WORK/apt-musl.log" 2>&1
    echo "apt-get install musl-tools: $(elapsed "$t0")s"
fi
check "musl-gcc available (musl-tools)" command -v musl-gcc
if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    t0=$(secs)
    rustup target add "$MUSL_TARGET" >"$WORK/rustup-musl.log" 2>&1
    echo "rustup target add $MUSL_TARGET: $(elapsed "$t0")s"
fi
check "rust target $MUSL_TARGET installed" bash -c "rustup target list --installed | grep -qx $MUSL_TARGET"
t0=$(secs)
# shellcheck disable=SC2086
if $BUILD_CMD >"$WORK/static-build.log" 2>&1; then
    took=$(elapsed "$t0")
    ok "$BUILD_CMD (${took}s)"
    mib() { awk -v s="$1" 'BEGIN { printf "%.1f MiB", s / 1048576 }'; }
    built=target/$MUSL_TARGET/release/vmidentity
    # As the Dockerfile does (strip --strip-debug), on a copy: cargo's output stays as built.
    STATIC=$WORK/vmidentity
    cp "$built" "$STATIC" && strip --strip-debug "$STATIC"
    size=$(stat -c %s "$STATIC")
    printf 'binary: %s, %s as built, %s after strip --strip-debug (the image'"'"'s /vmidentity); built in %ss (load %s)\n' \
        "$built" "$(mib "$(stat -c %s "$built")")" "$(mib "$size")" "$took" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%s static build %ss, %s bytes stripped\n' "$(date -u +%FT%TZ)" "$took" "$size" >>"$TOOLS/build-times.txt"
    finfo=$(file -b "$STATIC"); echo "file: $finfo"
    [[ $finfo == *"statically linked"* || $finfo == *"static-pie linked"* ]] && ok "file: statically linked" || bad "file: not static ($finfo)"
    lddout=$(ldd "$STATIC" 2>&1); echo "ldd: $lddout"
    [[ $lddout == *"not a dynamic executable"* || $lddout == *"statically linked"* ]] && ok "ldd: no shared libraries" || bad "ldd: $lddout"
    check "$STATIC --version" "$STATIC" --version
    check "$STATIC crd | diff - crds/$CRD_FILE" bash -c "'$STATIC' crd | diff - 'crds/$CRD_FILE'"
    check "$STATIC crd --policy | diff - crds/$POLICY_CRD_FILE" bash -c "'$STATIC' crd --policy | diff - 'crds/$POLICY_CRD_FILE'"
    # Built without the `simulator` feature: no simulator code linked, and the commands that
    # need it fail naming the feature (the symbol table is kept, so nm sees the crate's code).
    check "$STATIC links no vmidentity_simulator code (nm)" bash -c "nm '$STATIC' | grep -c vmidentity_simulator | grep -qx 0"
    check_fails "$STATIC demo fails: this build has no simulator" "cargo feature \`simulator\`" "$STATIC" demo
    check_fails "$STATIC apply --simulator fails: this build has no simulator" "cargo feature \`simulator\`" \
        "$STATIC" apply --simulator examples/demo/world.yaml -f examples/vm-web.yaml
else
    bad "$BUILD_CMD"; tail -n 30 "$WORK/static-build.log" | sed 's/^/     | /'
fi

# ---------------------------------------------------------------- linux/arm64 (cross, Zig)
step "the linux/arm64 static binary the Dockerfile builds (cargo zigbuild --target $ARM_TARGET)"
# The Dockerfile's own command and pins: cargo-zigbuild and ziglang from PyPI into a venv under
# target/tools (cached), aarch64-linux-gnu-strip from Debian's binutils-aarch64-linux-gnu.
ARM_BUILD_CMD=$(sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' Dockerfile | grep -o 'cargo zigbuild [^&;|]*' | head -n1 | sed 's/ *$//')
ZIG_PINS=$(grep -oE '(cargo-zigbuild|ziglang)==[^ ]+' Dockerfile | sort | tr '\n' ' ')
echo "Dockerfile: $ARM_BUILD_CMD (with ${ZIG_PINS% })"
ZIGVENV=$TOOLS/zigvenv
if [[ ! -x $ZIGVENV/bin/cargo-zigbuild || ! -f $ZIGVENV/.pins || $(<"$ZIGVENV/.pins") != "$ZIG_PINS" ]]; then
    t0=$(secs)
    rm -rf "$ZIGVENV"
    # shellcheck disable=SC2086
    { python3 -m venv "$ZIGVENV" && "$ZIGVENV/bin/pip" install --quiet $ZIG_PINS && echo "$ZIG_PINS" >"$ZIGVENV/.pins"; } >"$WORK/zig-install.log" 2>&1
    echo "pip install $ZIG_PINS: $(elapsed "$t0")s"
fi
check "cargo-zigbuild and ziglang installed (PyPI: $ZIG_PINS)" "$ZIGVENV/bin/cargo-zigbuild" --version
# qemu-user-static runs the aarch64 binary here (user-mode emulation), so it is executed too.
if ! command -v aarch64-linux-gnu-strip >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    t0=$(secs)
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils-aarch64-linux-gnu qemu-user-static; } >"$WORK/apt-arm64.log" 2>&1
    echo "apt-get install binutils-aarch64-linux-gnu qemu-user-static: $(elapsed "$t0")s"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$ARM_TARGET"; then
    t0=$(secs)
    rustup target add "$ARM_TARGET" >"$WORK/rustup-arm64.log" 2>&1
    echo "rustup target add $ARM_TARGET: $(elapsed "$t0")s"
fi
check "rust target $ARM_TARGET installed" bash -c "rustup target list --installed | grep -qx $ARM_TARGET"
t0=$(secs)
# shellcheck disable=SC2086
if PATH=$ZIGVENV/bin:$PATH $ARM_BUILD_CMD >"$WORK/static-build-arm64.log" 2>&1; then
    took=$(elapsed "$t0")
    ok "$ARM_BUILD_CMD (${took}s)"
    ARM_STATIC=$WORK/vmidentity-arm64
    cp "target/$ARM_TARGET/release/vmidentity" "$ARM_STATIC" && aarch64-linux-gnu-strip --strip-debug "$ARM_STATIC"
    printf '%s arm64 static build %ss, %s bytes stripped\n' "$(date -u +%FT%TZ)" "$took" "$(stat -c %s "$ARM_STATIC")" >>"$TOOLS/build-times.txt"
    finfo=$(file -b "$ARM_STATIC"); echo "file: $finfo"
    [[ $finfo == ELF\ 64-bit\ LSB\ *"ARM aarch64"* ]] && ok "file: an aarch64 ELF" || bad "file: not an aarch64 ELF ($finfo)"
    [[ ($finfo == *"statically linked"* || $finfo == *"static-pie linked"*) && $finfo != *interpreter* ]] \
        && ok "file: statically linked, no interpreter" || bad "file: not static ($finfo)"
    check "aarch64 binary: no dynamic section (readelf -d)" bash -c "aarch64-linux-gnu-readelf -d '$ARM_STATIC' | grep -q 'no dynamic section'"
    check "aarch64 binary links no vmidentity_simulator code (nm)" bash -c "aarch64-linux-gnu-nm '$ARM_STATIC' | grep -c vmidentity_simulator | grep -qx 0"
    check "qemu-aarch64-static $ARM_STATIC --version" qemu-aarch64-static "$ARM_STATIC" --version
    check "qemu-aarch64-static $ARM_STATIC crd | diff - crds/$CRD_FILE" bash -c "qemu-aarch64-static '$ARM_STATIC' crd | diff - 'crds/$CRD_FILE'"
else
    bad "$ARM_BUILD_CMD"; tail -n 30 "$WORK/static-build-arm64.log" | sed 's/^/     | /'
fi
finish
