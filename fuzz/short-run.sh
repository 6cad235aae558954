#!/usr/bin/env bash
# The short fuzz run tests/run does: builds every fuzz target once, then runs each for
# FUZZ_SECONDS (default 20) from a scratch copy of its committed seeds (fuzz/seeds/<target>/)
# and of the inputs that found bugs before (fuzz/regressions/<target>/), FUZZ_JOBS targets at
# a time (default: one per CPU). Exits 1 when any target finds a crash, a leak, a timeout or
# an out-of-memory; the input that did it is kept under fuzz/artifacts/<target>/ and the
# command that reproduces it is printed.
#
#   fuzz/short-run.sh                             # all targets
#   FUZZ_SECONDS=300 fuzz/short-run.sh narinfo    # one target, longer
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). No nightly toolchain: the stable one
# ships the sanitizer runtimes, and RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-$(nproc)}
export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# fuzz/Cargo.lock is not committed: start from the workspace's lock, so the crates are fuzzed
# with the dependency versions they are tested and shipped with.
cp ../Cargo.lock Cargo.lock

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
# One cargo build for all of them (the default build: optimized, debug assertions, ASan).
cargo fuzz build
bin_dir=${CARGO_TARGET_DIR:-target}/$(rustc -vV | sed -n 's/^host: //p')/release

scratch=target/short-run
rm -rf "$scratch"
mkdir -p "$scratch"
touch "$scratch/started"
# The targets' temporary files (restored trees, uploads that ingest syncs): in memory when
# there is a tmpfs for it.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR
  TMPDIR=$(mktemp -d /dev/shm/flywheel-fuzz.XXXXXX)
  trap 'rm -rf "$TMPDIR"' EXIT
fi

run_one() {
  local t=$1
  if [ ! -d "seeds/$t" ]; then
    echo "fuzz/short-run.sh: no seeds for $t (fuzz/seeds/$t/)" >"$scratch/$t.log"
    return 1
  fi
  # Fuzzing adds inputs to its corpus: a copy, never the committed seeds. Inputs that once
  # found a bug (fuzz/regressions/<target>/) are run first, every time.
  mkdir -p "$scratch/$t/corpus" "artifacts/$t"
  cp seeds/"$t"/* "$scratch/$t/corpus/"
  if [ -d "regressions/$t" ]; then
    cp regressions/"$t"/* "$scratch/$t/corpus/"
  fi
  local extra=()
  case $t in
    # Bounded decoding: no single allocation above what a decoder limit allows.
    upload_body) extra=(-malloc_limit_mb=64) ;;
  esac
  "$bin_dir/$t" "$scratch/$t/corpus" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
    >"$scratch/$t.log" 2>&1
}

running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  (
    rc=0
    run_one "$t" || rc=$?
    echo "$rc" >"$scratch/$t.rc"
  ) &
  running=$((running + 1))
done
wait

failed=()
for t in "${targets[@]}"; do
  if [ "$(cat "$scratch/$t.rc" 2>/dev/null)" = 0 ]; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
    printf '%-12s ok: %s inputs in %s s\n' "$t" "${runs:-?}" "$seconds"
  else
    failed+=("$t")
    printf '%-12s FAILED; its log from the failure on, without the stack frames (all of it: fuzz/%s):\n' "$t" "$scratch/$t.log"
    awk '/panicked at|ERROR: / { on = 1 } on && !/^ *(#[0-9]+ |[0-9]+: |at )/ { print "    " $0; if (++n == 60) exit }' "$scratch/$t.log"
    find "artifacts/$t" -type f -newer "$scratch/started" 2>/dev/null | while read -r a; do
      echo "    kept: fuzz/$a; reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $a"
    done
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/short-run.sh: ${failed[*]} failed" >&2
  exit 1
fi
