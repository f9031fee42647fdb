#!/usr/bin/env bash
# Mutation testing of the planner's decision logic with the planner's own tests
# (cargo-mutants): every mutant of plan.rs, grants.rs, live.rs and policy.rs that the tests
# do not catch is listed in <out>/mutants.out/missed.txt.
#
#   scripts/mutants.sh                 # all four files, into target/mutants/run
#   scripts/mutants.sh planner/src/live.rs            # one file
#   OUT=target/mutants/x JOBS=2 scripts/mutants.sh    # elsewhere, two builds at a time
#
# Installs cargo-mutants into target/tools (cargo install --locked, pinned) when missing.
# Slow, not wired into CI: on a shared 2-core machine with JOBS=1 the first run tested 248 of
# the 331 mutants in about 70 minutes (~17 s each); 38 chosen mutants (`--re`) took 10
# minutes. Each mutant is built in a copy of the tree (not --in-place), so the working tree
# is never modified.
#
# Known equivalent mutant (stays "missed"): plan.rs `plan_target`, `wire_format() ==
# IdentityIdsArray` -> `!=` in the "different identity formats" check: the check counts the
# distinct values of that boolean across objects, and negating every value keeps the count.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSION=27.1.0
TOOLS=$ROOT/target/tools
export PATH=$TOOLS/bin:$PATH
if ! cargo mutants --version 2>/dev/null | grep -qx "cargo-mutants $VERSION"; then
    cargo install cargo-mutants --version "$VERSION" --locked --root "$TOOLS"
fi
OUT=${OUT:-target/mutants/run}
JOBS=${JOBS:-1}
files=("$@")
if ((${#files[@]} == 0)); then
    files=(planner/src/plan.rs planner/src/grants.rs planner/src/live.rs planner/src/policy.rs)
fi
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done
mkdir -p "$OUT"
start=$(date +%s)
rc=0
cargo mutants -p vmidentity-planner "${args[@]}" --jobs "$JOBS" --timeout 180 --output "$OUT" || rc=$?
end=$(date +%s)
o=$OUT/mutants.out
count() { [[ -f $1 ]] && grep -c . "$1" || echo 0; }
echo "mutants: caught $(count "$o/caught.txt"), missed $(count "$o/missed.txt"), timeout $(count "$o/timeout.txt"), unviable $(count "$o/unviable.txt") in $(( (end - start) / 60 )) min (list: $o/missed.txt)" >&2
# cargo-mutants exits 2 when some mutants were missed, 3 on timeouts: the list is the result.
exit $rc
