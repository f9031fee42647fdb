#!/usr/bin/env bash
# Release supply-chain checks, as CI runs them (scripts/test.sh):
#   - cargo-deny, offline: licences (deny.toml's allow list), bans (no wildcard requirements),
#     sources (crates.io only, no git)
#   - a CycloneDX SBOM of the controller from Cargo.lock (cargo-cyclonedx), written to
#     target/release-artifacts/vmidentity.cdx.json and checked against Cargo.lock
# cargo-deny and cargo-cyclonedx are `cargo install --locked`ed (pinned) from crates.io into
# target/tools/cargo once (several minutes; cached). docs/release.md uses the same commands.
# Prints "N passed, N failed" last; exits non-zero on any failure.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

CARGO_DENY_VERSION=0.20.2
CARGO_CYCLONEDX_VERSION=0.5.9
TOOLS=${PACKAGING_TOOLS_DIR:-$ROOT/target/tools}
ROOTDIR=$TOOLS/cargo
WORK=$ROOT/target/release-artifacts
mkdir -p "$WORK" "$ROOTDIR"

pass=0; fail=0
ok()  { pass=$((pass + 1)); printf 'ok   - %s\n' "$*"; }
bad() { fail=$((fail + 1)); printf 'FAIL - %s\n' "$*"; }
check() {
    local desc=$1; shift
    local log=$WORK/check-$((pass + fail + 1)).log
    if "$@" >"$log" 2>&1; then ok "$desc"
    else bad "$desc"; tail -n 40 "$log" | sed 's/^/     | /'; fi
}
# cargo_tool CRATE VERSION BIN: cargo install --locked CRATE@VERSION unless installed.
cargo_tool() {
    local crate=$1 version=$2 bin=$3 t0
    if [[ -x $ROOTDIR/bin/$bin && -f $ROOTDIR/.$crate.version && $(<"$ROOTDIR/.$crate.version") == "$version" ]]; then
        printf '%-16s %s (cached)\n' "$crate" "$version"; return 0
    fi
    t0=$(date +%s)
    if ! CARGO_TARGET_DIR=$TOOLS/cargo-build cargo install --locked --quiet --root "$ROOTDIR" "$crate@$version" >"$WORK/$crate-install.log" 2>&1; then
        tail -n 30 "$WORK/$crate-install.log"; return 1
    fi
    echo "$version" >"$ROOTDIR/.$crate.version"
    printf '%-16s %s built in %ss\n' "$crate" "$version" "$(( $(date +%s) - t0 ))"
    printf '%s cargo install %s@%s %ss (load %s)\n' "$(date -u +%FT%TZ)" "$crate" "$version" "$(( $(date +%s) - t0 ))" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$TOOLS/build-times.txt"
}

printf '\n==> tools (cargo install --locked, cached under %s)\n' "${ROOTDIR#"$ROOT"/}"
check "cargo-deny $CARGO_DENY_VERSION installed" cargo_tool cargo-deny "$CARGO_DENY_VERSION" cargo-deny
check "cargo-cyclonedx $CARGO_CYCLONEDX_VERSION installed" cargo_tool cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION" cargo-cyclonedx
rm -rf "$TOOLS/cargo-build"
export PATH=$ROOTDIR/bin:$PATH

printf '\n==> cargo-deny (offline): licences, bans, sources (deny.toml)\n'
# Every crate of every platform in Cargo.lock, so the offline checks see the whole graph.
check "cargo fetch --locked" cargo fetch --locked
check "cargo deny --offline check licenses bans sources" \
    cargo deny --offline --locked --config deny.toml check licenses bans sources
# The check can fail: without MIT in the allow list, the MIT-only crates are rejected.
mkdir -p "$WORK/deny-probe"
sed '/^    "MIT",$/d' deny.toml >"$WORK/deny-probe/deny.toml"
if cargo deny --offline --locked --config "$WORK/deny-probe/deny.toml" check licenses >"$WORK/deny-probe.log" 2>&1; then
    bad "cargo deny refuses the graph when MIT is not allowed (it passed)"
elif grep -q "rejected" "$WORK/deny-probe.log"; then
    ok "cargo deny refuses the graph when MIT is not allowed (the check can fail)"
else
    bad "cargo deny without MIT failed, but not with a licence rejection"; tail -n 10 "$WORK/deny-probe.log" | sed 's/^/     | /'
fi

printf '\n==> CycloneDX SBOM of the controller (cargo-cyclonedx, from Cargo.lock)\n'
# cargo-cyclonedx writes <name>.cdx.json beside each Cargo.toml of the workspace: made in a copy
# of the sources, so the work tree stays clean. --no-default-features: as the image is built.
SRC=$WORK/sbom-src
rm -rf "$SRC"; mkdir -p "$SRC"
tar --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$SRC"
if (cd "$SRC" && cargo cyclonedx --format json --spec-version 1.5 --manifest-path controller/Cargo.toml \
        --no-default-features --target all --override-filename vmidentity.cdx) >"$WORK/cyclonedx.log" 2>&1 \
        && cp "$SRC/controller/vmidentity.cdx.json" "$WORK/vmidentity.cdx.json"; then
    ok "cargo cyclonedx (controller) -> target/release-artifacts/vmidentity.cdx.json"
else
    bad "cargo cyclonedx"; tail -n 20 "$WORK/cyclonedx.log" | sed 's/^/     | /'
fi
rm -rf "$SRC"
# What the image's binary links: the controller's normal and build dependencies, every target.
cargo tree --locked --offline -p vmidentity --no-default-features -e normal,build --target all \
    --prefix none --format '{p}' >"$WORK/cargo-tree.txt" 2>"$WORK/cargo-tree.err" || bad "cargo tree -p vmidentity"
check "the SBOM is CycloneDX 1.5 of vmidentity; every component has a purl and a licence; every crates.io component is in Cargo.lock; every crates.io crate the binary links is in it" \
    python3 - "$WORK/vmidentity.cdx.json" Cargo.lock "$WORK/cargo-tree.txt" <<'PY'
import json, re, sys, tomllib
bom = json.load(open(sys.argv[1]))
lock = {(p["name"], p["version"]) for p in tomllib.load(open(sys.argv[2], "rb"))["package"]
        if p.get("source", "").startswith("registry+")}
assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5", (bom.get("bomFormat"), bom.get("specVersion"))
assert bom["metadata"]["component"]["name"] == "vmidentity", bom["metadata"]["component"]["name"]
comps = []
def walk(cs):
    for c in cs:
        comps.append(c); walk(c.get("components", []))
walk(bom.get("components", []))
no_purl = [c["name"] for c in comps if not c.get("purl", "").startswith("pkg:cargo/")]
no_lic = [c["name"] for c in comps if not c.get("licenses")]
registry = {(c["name"], c["version"]) for c in comps if "download_url" not in c["purl"]}
linked = set()
for line in open(sys.argv[3]):
    m = re.match(r"(\S+) v(\S+)( \(.*\))?$", line.strip())
    if m and not (m.group(3) or "").startswith(" (/"):
        linked.add((m.group(1), m.group(2)))
print("%d components; %d crates.io crates linked by the binary" % (len(comps), len(linked)))
assert len(linked) > 100, "cargo tree listed only %d crates" % len(linked)
assert not no_purl and not no_lic, (no_purl[:5], no_lic[:5])
assert registry <= lock, "components not in Cargo.lock: %s" % sorted(registry - lock)[:5]
assert linked <= registry, "linked but not in the SBOM: %s" % sorted(linked - registry)[:5]
PY

printf '\n%d passed, %d failed\n' "$pass" "$fail"
((fail == 0))
