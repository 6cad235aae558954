# The GPU runner image for the shared GPU lane: the GitHub Actions runner from nixpkgs, a
# shell, git, Nix, CA certificates, the flywheel canary, and the NVIDIA userspace of one
# pinned driver version, baked in with nix/lib's mkDriverLayer (docs/driver.md).
#
#   nix build .#gpu-runner-image          # x86_64-linux only (the NVIDIA driver)
#
# `pkgs` must allow the NVIDIA driver's unfree licence (the flake passes a package set
# whose allowUnfreePredicate accepts nvidia-x11 and nvidia-dc only).
#
# nixpkgs attributes used here, and the files they were checked in (docs/nix.md):
#   github-runner (bin/Runner.Listener, bin/config.sh, bin/run.sh, bin/env.sh)
#       pkgs/by-name/gi/github-runner/package.nix (`executables` wrapped into $out/bin)
#   linuxPackages.nvidiaPackages.mkDriver   pkgs/top-level/linux-kernels.nix (nvidiaPackages),
#       pkgs/os-specific/linux/nvidia-x11/default.nix (mkDriver = generic; dc_580),
#       pkgs/os-specific/linux/nvidia-x11/generic.nix (arguments; outputs out, lib32, bin, firmware)
#   bashInteractive                         pkgs/shells/bash/ (bashInteractive = callPackage ./5.nix)
#   coreutils, gitMinimal                   pkgs/by-name/gi/github-runner/package.nix (callPackage args)
#   gnutar, gzip                            pkgs/by-name/gn/gnutar/package.nix, pkgs/by-name/gz/gzip/package.nix
#   zstd                                    pkgs/by-name/bb/bbox/package.nix (callPackage arg)
#   curl, jq, xz (bin output first: "${p}/bin" is the programs')
#       pkgs/by-name/cu/curlMinimal/package.nix, pkgs/by-name/jq/jq/package.nix, pkgs/by-name/xz/xz/package.nix
#   unzip, gnugrep, findutils, diffutils, which, hostname-debian, git-lfs, file, less, coreutils
#       pkgs/by-name/<2 letters>/<name>/package.nix
#   gnused, gawk                            pkgs/tools/text/{gnused,gawk}/default.nix
#   procps                                  pkgs/os-specific/linux/procps-ng/default.nix
#   openssh                                 pkgs/tools/networking/openssh/common.nix
#   nix-ld (libexec/nix-ld)                 nixpkgs' nix-ld package (postInstall links libexec/nix-ld)
#   stdenv.cc.bintools.dynamicLinker, stdenv.cc.cc, zlib, zstd, openssl, attr, libssh, bzip2,
#   libxml2, acl, libsodium, util-linux     nixos/modules/programs/nix-ld.nix (baseLibraries, NIX_LD)
#   nix                                     pkgs/top-level/all-packages.nix
#   cacert (etc/ssl/certs/ca-bundle.crt)    pkgs/by-name/ca/cacert/package.nix
#   runCommand, fetchurl                    pkgs/build-support/trivial-builders/default.nix,
#                                           pkgs/build-support/fetchurl/default.nix
{
  pkgs,
  flywheelLib,
  flywheel,
  canary,
  # The NVIDIA userspace must be exactly the nodes' kernel module version ("Driver/library
  # version mismatch" otherwise). 580.159.04 is what the GPU machine we test on runs.
  driverVersion ? "580.159.04",
  # Another driver package (a nixpkgs NVIDIA driver derivation, or a list of store paths of a
  # host tree): overrides the pinned one. Its version must still be driverVersion.
  driver ? null,
  cacheUrl ? null,
  cachePublicKey ? null,
  sourceRevision ? null,
}:
let
  system = pkgs.stdenv.hostPlatform.system;

  # Data center (Tesla) driver releases, with the hashes nixpkgs itself records for them in
  # pkgs/os-specific/linux/nvidia-x11/default.nix (the dc_580 entry). Built through mkDriver,
  # so the version does not depend on which 580 release the pinned nixpkgs' dc_580 names.
  knownDrivers = {
    "580.159.04" = rec {
      version = "580.159.04";
      url = "https://us.download.nvidia.com/tesla/${version}/NVIDIA-Linux-x86_64-${version}.run";
      sha256_64bit = "sha256-weZnYbCI0Xs632y2l53przi+JoTRArABoXbc+vq9yh4=";
      openSha256 = "sha256-zsNmjZW0cyZWPp3vDT3mNeqAo0hS0M7e9Tbvwvij+F4=";
      persistencedSha256 = "sha256-vDawiy52GB8JABUKZDiQUc8uda8p/7jCFW7rTu6QMa4=";
      fabricmanagerSha256 = "sha256-Jk6XVn/d6vqfxYGAACiD9UHelnjdC4+zOi4EEv8LuKE=";
      useFabricmanager = true;
      usePersistenced = true;
      useSettings = false;
    };
  };

  driverPackage =
    if driver != null then
      driver
    else if system != "x86_64-linux" then
      throw "images/gpu-runner: the NVIDIA data center driver is pinned for x86_64-linux only (system is ${system}); pass `driver` for another system"
    else if builtins.hasAttr driverVersion knownDrivers then
      # A kernel-package-set attribute: it builds the kernel module for pkgs.linuxPackages'
      # kernel too, but the image takes only the userspace outputs (out, bin, firmware).
      pkgs.linuxPackages.nvidiaPackages.mkDriver knownDrivers.${driverVersion}
    else
      throw "images/gpu-runner: no pinned NVIDIA driver ${driverVersion} (known: ${builtins.concatStringsSep ", " (builtins.attrNames knownDrivers)}); add its hashes to knownDrivers or pass `driver`";

  # The newest runner release recorded here (runner.json, docs/runner-image.md says where each
  # value comes from and how to bump it). The image labels the runner it carries with its
  # version, and with its release date when it is that release, so `flywheel lane check` and
  # the canary can warn before GitHub stops queueing jobs to it.
  runnerRelease = builtins.fromJSON (builtins.readFile ./runner.json);
  runnerVersion = pkgs.github-runner.version;
  runnerReleased = if runnerVersion == runnerRelease.version then runnerRelease.released else null;
  runnerLabels = {
    "dev.flywheel.runner.version" = runnerVersion;
  }
  // (if runnerReleased == null then { } else { "dev.flywheel.runner.released" = runnerReleased; });

  # ARC's container hooks for kubernetes mode (a lane's runners.container_mode), the release
  # runner.json records, unpacked as the actions-runner image unpacks them (/home/runner/k8s,
  # index.js at its top). The runner runs index.js with its own Node.
  hooksRelease = runnerRelease.containerHooks;
  containerHooks =
    pkgs.runCommand "runner-container-hooks-k8s-${hooksRelease.version}"
      {
        nativeBuildInputs = [ pkgs.unzip ];
        src = pkgs.fetchurl { inherit (hooksRelease) url sha256; };
        passthru.version = hooksRelease.version;
      }
      ''
        mkdir -p "$out"
        unzip -q "$src" -d "$out"
        test -f "$out/index.js"
      '';

  # Binaries built elsewhere (what setup-node, setup-python, setup-go and the tool cache
  # download) ask for /lib64/ld-linux-x86-64.so.2 and find their libraries in /lib, /usr/lib.
  # nix-ld answers at the loader's path and runs them with nixpkgs' glibc and the libraries in
  # NIX_LD_LIBRARY_PATH, which Nix-built programs never see (docs/runner-image.md says why
  # nix-ld rather than glibc at the FHS paths). The set is NixOS' programs.nix-ld default
  # without systemd.
  fhsLibraries = with pkgs; [
    stdenv.cc.cc
    zlib
    zstd
    curl
    openssl
    attr
    libssh
    bzip2
    libxml2
    acl
    libsodium
    util-linux
    xz
  ];
  # Each library's lib/ (its `lib` output where it has one).
  fhsLibDirs = map (p: "${p.lib or p.out or p}/lib") fhsLibraries;

  driverLayer = flywheelLib.mkDriverLayer {
    inherit flywheel system;
    driver = driverPackage;
    version = driverVersion;
    capabilities = [
      "utility"
      "compute"
    ];
  };
in
flywheelLib.mkRunnerImage {
  inherit
    flywheel
    system
    driverLayer
    cacheUrl
    cachePublicKey
    sourceRevision
    ;
  name = "flywheel/gpu-runner";
  tag = driverVersion;
  # What pkgs/by-name/gi/github-runner/package.nix installs: bin/Runner.Listener (the
  # listener, wrapped to set RUNNER_ROOT, default $HOME/.github-runner), bin/config.sh,
  # bin/run.sh, bin/Runner.Worker, bin/Runner.PluginHost, bin/env.sh.
  runner = "${pkgs.github-runner}/bin/Runner.Listener";
  shell = "${pkgs.bashInteractive}/bin/bash";
  packages = [
    pkgs.github-runner
    pkgs.bashInteractive
    pkgs.coreutils
    pkgs.gitMinimal
    pkgs.gnutar # actions/cache and most setup-* actions unpack with tar
    pkgs.gzip
    pkgs.zstd
    # What jobs and actions call without asking, as the actions-runner image has them
    # (docs/runner-image.md).
    pkgs.curl
    pkgs.jq
    pkgs.unzip
    pkgs.xz
    pkgs.gnugrep
    pkgs.gnused
    pkgs.gawk
    pkgs.findutils
    pkgs.diffutils
    pkgs.which
    pkgs.procps
    pkgs.hostname-debian
    pkgs.git-lfs
    pkgs.openssh
    pkgs.file
    pkgs.less
    pkgs.nix
    pkgs.cacert
    canary
    flywheel
  ];
  caBundle = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
  # Linked at /usr/bin/env: `#!/usr/bin/env bash` starts most job scripts.
  envProgram = "${pkgs.coreutils}/bin/env";
  fhsLoader = "${pkgs.nix-ld}/libexec/nix-ld";
  inherit containerHooks;
  extraClosure = fhsLibDirs ++ [ pkgs.stdenv.cc.bintools.dynamicLinker ];
  labels = runnerLabels;
  # Inside the container the labels are out of reach: the canary reads these instead.
  extraEnv = {
    FLYWHEEL_RUNNER_VERSION = runnerVersion;
    NIX_LD = pkgs.stdenv.cc.bintools.dynamicLinker;
    NIX_LD_LIBRARY_PATH = builtins.concatStringsSep ":" fhsLibDirs;
  }
  // (if runnerReleased == null then { } else { FLYWHEEL_RUNNER_RELEASED = runnerReleased; });
}
