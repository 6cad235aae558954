#!/usr/bin/env bash
# A dry run of bench/runner-image/on-device.sh on a machine without a GPU (this one), to shake out
# the script before spending device time: a fake driver root made as tests/e2e/support/driver_root.rs
# makes one, but with libcuda and NVML stand-ins compiled here that link what the real 580
# driver's libraries link (libdl, libpthread, librt, libm), and a kernel module version file for
# the job-started hook. The gpu and cuda steps cannot pass here: at best, once the libraries
# load, they fail as on a machine without a GPU.
# usage: bench/runner-image/local-test.sh PREP_DIR OUT_DIR [RUNTIME]
set -euo pipefail
prep=$(realpath "$1")
mkdir -p "$2"
out=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
v=580.159.04
fake=$(mktemp -d /tmp/flywheel-fake-driver.XXXXXX)
trap 'rm -rf "$fake"' EXIT
mkdir -p "$fake/lib64" "$fake/bin"
# Stand-ins compiled here: every entry point the canary resolves, failing as a driver without a GPU
# does (cuInit: CUDA_ERROR_NO_DEVICE, nvmlInit_v2: NVML_ERROR_DRIVER_NOT_LOADED), linked against
# libdl, libpthread, librt and libm as the real 580 libraries are (docs/records/2026-11-24-driver-on-h100.md).
cuda_syms="cuInit cuDriverGetVersion cuDeviceGetCount cuDeviceGet cuDeviceGetName cuDeviceGetAttribute
  cuDeviceTotalMem_v2 cuCtxCreate_v2 cuCtxDestroy_v2 cuCtxSynchronize cuMemGetInfo_v2 cuMemAlloc_v2
  cuMemFree_v2 cuMemAllocHost_v2 cuMemFreeHost cuMemcpyHtoD_v2 cuMemcpyDtoH_v2 cuMemcpyDtoD_v2
  cuMemcpyHtoDAsync_v2 cuMemcpyDtoHAsync_v2 cuMemcpyDtoDAsync_v2 cuStreamCreate cuStreamSynchronize
  cuStreamDestroy_v2 cuEventCreate cuEventRecord cuEventSynchronize cuEventElapsedTime cuEventDestroy_v2
  cuModuleLoadDataEx cuModuleGetFunction cuModuleUnload cuLaunchKernel"
{
  for f in $cuda_syms; do echo "int $f(void) { return 100; }"; done
  echo 'int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }'
  echo 'int cuGetErrorString(int e, const char **s) { *s = "no CUDA-capable device is detected"; return 0; }'
} > "$fake/cuda.c"
{
  echo 'int nvmlInit_v2(void) { return 9; }'
  for f in nvmlShutdown nvmlSystemGetDriverVersion nvmlDeviceGetCount_v2 nvmlDeviceGetHandleByIndex_v2; do
    echo "int $f(void) { return 9; }"
  done
  echo 'const char *nvmlErrorString(int e) { return "Driver Not Loaded"; }'
} > "$fake/nvml.c"
build() { # SOURCE SONAME FILE
  gcc -shared -fPIC -Wl,-soname,"$2" -o "$fake/lib64/$3" "$fake/$1"
  # glibc 2.34's libdl, libpthread and librt are empty at link time: name them as the driver does.
  # (One change per patchelf call: with --set-soname in the same call it names the SONAME wrong.)
  for needed in libm.so.6 librt.so.1 libpthread.so.0 libdl.so.2; do
    patchelf --add-needed "$needed" "$fake/lib64/$3"
  done
  ln -s "$3" "$fake/lib64/$2"
}
build cuda.c libcuda.so.1 "libcuda.so.$v"
build nvml.c libnvidia-ml.so.1 "libnvidia-ml.so.$v"
# A compute library the collector needs beside libcuda: this machine's libz renamed.
cp -L /lib/x86_64-linux-gnu/libz.so.1 "$fake/lib64/libnvidia-ptxjitcompiler.so.$v"
patchelf --set-soname libnvidia-ptxjitcompiler.so.1 "$fake/lib64/libnvidia-ptxjitcompiler.so.$v"
ln -s "libnvidia-ptxjitcompiler.so.$v" "$fake/lib64/libnvidia-ptxjitcompiler.so.1"
printf '#!/bin/sh\necho nvidia-smi %s\n' "$v" > "$fake/bin/nvidia-smi"
chmod 755 "$fake/bin/nvidia-smi"
printf 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Wed Jun  4 10:00:00 UTC 2025\n' "$v" > "$fake/kernel-version"
DRIVER_ROOT=$fake COLLECT_ARGS="--no-nvml --expect-version $v" RUNTIME=${3:-auto} \
  EXTRA_POD_ENV="FLYWHEEL_KERNEL_VERSION_FILE=/home/runner/.cache/kernel-version" \
  EXTRA_CACHE_FILES="$fake/kernel-version" \
  bash "$here/on-device.sh" "$prep" "$out"
