#!/usr/bin/env bash
# Disables one safety rule at a time (via `--cfg mutation="..."`, see
# src/raft/node.rs) and shows that the unit tests or the simulation catch it.
# Runs on a snapshot of HEAD (a temporary git worktree) and builds into
# target/mutation, so the working tree and the normal build are left alone.
# Usage: scripts/mutation-check.sh [mutation ...]   (SIM_SEEDS=N widens the simulation)
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
all=(no_election_restriction commit_any_term vote_before_persist truncate_after_prev read_without_leadership_check)
if [ $# -gt 0 ]; then muts=("$@"); else muts=("${all[@]}"); fi
tree="$(mktemp -d)/raftkv"
git -C "$root" worktree add --detach "$tree" HEAD >/dev/null 2>&1 || { echo "cannot create a worktree"; exit 2; }
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1' EXIT
cd "$tree"
export CARGO_TARGET_DIR="$root/target/mutation"
status=0
for m in "${muts[@]}"; do
  log="$root/target/mutation-$m.log"
  RUSTFLAGS="--cfg mutation=\"$m\"" cargo test --release --no-fail-fast --lib --test simulation -- --test-threads 2 >"$log" 2>&1
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
