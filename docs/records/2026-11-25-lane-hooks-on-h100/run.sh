#!/usr/bin/env bash
# The lane's job hooks on the GPU machine, against its real driver and devices:
#   bash docs/records/2026-11-25-lane-hooks-on-h100/run.sh .xm/lane/flywheel "$OUT"
# (the release flywheel carried in .xm/; output under OUT).
set -u
F=$(realpath "$1"); OUT=${2:-/tmp/lane-hooks}; mkdir -p "$OUT"
work=$(mktemp -d); mkdir -p "$work/tmp"
export HOME=$work TMPDIR=$work/tmp FLYWHEEL_HOOK_STATE_DIR=$work/state
exec > >(tee "$OUT/hooks.log") 2>&1
say() { printf '\n$ %s\n' "$*"; }
say "kernel module"; head -1 /proc/driver/nvidia/version; ls /dev/nvidia*
say "1. job-started on the host's own driver (FLYWHEEL_DRIVER_ROOT=/), no cache"
"$F" lane hook job-started; echo "rc=$?"
say "2. job-started with the kernel module reporting another version"
printf 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build\n' > "$work/kernel-570"
FLYWHEEL_KERNEL_VERSION_FILE=$work/kernel-570 "$F" lane hook job-started; echo "rc=$?"
say "3. a job leaves a temp file and a process holding /dev/nvidia0; job-completed"
"$F" lane hook job-started >/dev/null
echo scratch > "$TMPDIR/job-scratch"
sh -c 'exec 3</dev/nvidia0; exec sleep 60' & holder=$!
sleep 1
"$F" lane hook job-completed; echo "rc=$?"
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
say "4. a CUDA process (torch) still running when the job ends; job-completed"
if python3 -c 'import torch' 2>/dev/null; then
  "$F" lane hook job-started >/dev/null
  python3 -c 'import torch, time; x = torch.ones(1 << 20, device="cuda"); print("torch holds", torch.cuda.memory_allocated(), "bytes", flush=True); time.sleep(60)' &
  cuda=$!
  for _ in $(seq 1 60); do sleep 1; nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -q . && break; done
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  "$F" lane hook job-completed; echo "rc=$?"
  kill "$cuda" 2>/dev/null; wait "$cuda" 2>/dev/null
else
  echo "no torch here"
fi
say "5. job-completed after the processes are gone"
"$F" lane hook job-started >/dev/null
"$F" lane hook job-completed; echo "rc=$?"
