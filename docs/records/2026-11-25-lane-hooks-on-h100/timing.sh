#!/usr/bin/env bash
# What the hooks cost a job on the GPU machine: job-started against a driver tree collected from
# the host's driver (as the image's driver layer holds it, manifest verified file by file), and
# job-completed with nothing to push:
#   bash docs/records/2026-11-25-lane-hooks-on-h100/timing.sh .xm/lane/flywheel "$OUT"
set -eu
F=$(realpath "$1"); OUT=${2:-/tmp/lane-hooks}; mkdir -p "$OUT"
work=$(mktemp -d); mkdir -p "$work/tmp"
export HOME=$work TMPDIR=$work/tmp FLYWHEEL_HOOK_STATE_DIR=$work/state
exec > >(tee "$OUT/timing.log") 2>&1
"$F" driver collect --driver-root / --capabilities utility,compute,graphics --out "$work/driver" >/dev/null
echo "driver tree: $(du -sh "$work/driver" | cut -f1), $(find "$work/driver" -type f | wc -l) files"
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
# The tree was just written, so it is in the page cache: these are warm figures (the machine's
# caches are left alone).
echo "job-started against the collected tree, 5 times (ms):"
for i in 1 2 3 4 5; do printf '  %s\n' "$(FLYWHEEL_DRIVER_ROOT=$work/driver ms "$F" lane hook job-started)"; done
echo "job-started without a driver check (--no-driver), 3 times (ms):"
for i in 1 2 3; do printf '  %s\n' "$(ms "$F" lane hook job-started --no-driver)"; done
echo "job-completed, no cache, 3 times (ms):"
for i in 1 2 3; do "$F" lane hook job-started --no-driver >/dev/null; printf '  %s\n' "$(ms "$F" lane hook job-completed)"; done
FLYWHEEL_DRIVER_ROOT=$work/driver "$F" lane hook job-started
