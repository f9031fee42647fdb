#!/usr/bin/env bash
# The whole test suite, as CI runs it (README command 2):
#   formatting, lints, generated CRD freshness, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "crds/ is generated from the CRD types and up to date"
cargo run --quiet --locked -p vmidentity -- crd > target/crd.yaml
if ! diff -u crds/vmidentity.dev_virtualmachineidentities.yaml target/crd.yaml; then
  echo "crds/ is stale: run 'cargo run -p vmidentity -- crd > crds/vmidentity.dev_virtualmachineidentities.yaml'" >&2
  exit 1
fi

step "cargo test --workspace"
cargo test --workspace --locked
