#!/usr/bin/env bash
# Disables one safety rule at a time (the patches in scripts/mutations/, each
# a plausible mistake in src/raft/node.rs) and shows that the unit tests or
# the simulation catch it. The rules themselves carry no test switches.
# `make mutants` (cargo-mutants) is the broad, generic counterpart.
# Runs on a snapshot of HEAD (a temporary git worktree) and builds into
# target/mutation, so the working tree and the normal build are left alone.
# Usage: scripts/mutation-check.sh [mutation ...]   (SIM_SEEDS=N widens the simulation)
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
all=()
for p in "$root"/scripts/mutations/*.patch; do all+=("$(basename "$p" .patch)"); done
if [ $# -gt 0 ]; then muts=("$@"); else muts=("${all[@]}"); fi
tree="$(mktemp -d)/raftkv"
git -C "$root" worktree add --detach "$tree" HEAD >/dev/null 2>&1 || { echo "cannot create a worktree"; exit 2; }
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1' EXIT
cd "$tree"
export CARGO_TARGET_DIR="$root/target/mutation"
status=0
for m in "${muts[@]}"; do
  log="$root/target/mutation-$m.log"
  git checkout -q -- .
  if ! git apply "$root/scripts/mutations/$m.patch"; then
    echo "PATCH DOES NOT APPLY  $m   (update scripts/mutations/$m.patch)"; status=1; continue
  fi
  cargo test --release --no-fail-fast -p raftkv --lib --test simulation -- --test-threads 2 >"$log" 2>&1
  if grep -qE "^error(\[E|: could not compile)" "$log"; then
    echo "BUILD FAILED  $m   (see $log)"; status=1; continue
  fi
  if grep -qE "^test .* FAILED" "$log"; then
    echo "CAUGHT  $m"
    grep -E "^test .* FAILED" "$log" | sed 's/^/        /'
    grep -m2 -oE "seed [0-9]+ \([0-9] nodes\) failed at t=[0-9]+ms: [^\\]*" "$log" | cut -c1-200 | sed 's/^/        /'
  else
    echo "MISSED  $m   (see $log)"
    status=1
  fi
done
exit $status
