{
  description = "flywheel: reproducible GPU runner images, a Nix binary cache for CI, and the lane canary";

  # Pinned by hand in flake.lock (the machines this was written on cannot run
  # `nix flake lock`): nixos-unstable at a799d3e (2026-06-06), whose narHash Nix
  # computed in a public lockfile. Its rustc (1.95) is the workspace's
  # `rust-version`, and tests/rust-version.sh fails when Cargo.lock needs a newer
  # one; docs/nix.md says what the pin holds and how to move it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      # nixpkgs attributes used below, and the nixpkgs file that confirmed each
      # (checked against NixOS/nixpkgs sources, not evaluated: no machine here
      # can fetch nixpkgs). docs/nix.md keeps the full list, with images/ and the
      # NixOS module; keep both in sync.
      #   lib, lib.genAttrs, legacyPackages.<system>  flake.nix (nixpkgs' own)
      #   lib.fileset.toSource, lib.fileset.unions  lib/fileset/default.nix
      #   rustPlatform.buildRustPackage (cargoLock.lockFile, cargoBuildFlags, doCheck)
      #       pkgs/development/compilers/rust/make-rust-platform.nix,
      #       pkgs/build-support/rust/build-rust-package/default.nix,
      #       pkgs/build-support/rust/hooks/cargo-build-hook.sh (cargoBuildFlags),
      #       pkgs/by-name/bb/bbox/package.nix (cargoLock.lockFile + cargoBuildFlags list)
      #   lib.licenses.asl20                pkgs/by-name/sk/skopeo/package.nix (meta)
      #   mkShell (packages)                pkgs/build-support/mkshell/default.nix,
      #                                     doc/build-helpers/special/mkshell.section.md
      #   cargo, rustc, clippy              pkgs/by-name/ru/rustlings/package.nix (callPackage args)
      #   rustfmt                           pkgs/development/tools/rust/bindgen/unwrapped.nix (callPackage arg)
      #   rust-analyzer                     pkgs/by-name/ru/rust-analyzer/package.nix
      #   skopeo, umoci, hyperfine          pkgs/by-name/{sk/skopeo,um/umoci,hy/hyperfine}/package.nix
      #   zstd, sqlite                      pkgs/by-name/bb/bbox/package.nix (callPackage args);
      #                                     sqlite: pkgs/development/libraries/sqlite/default.nix
      #                                     (first output "bin" holds sqlite3)
      #   openssl                           doc/languages-frameworks/rust.section.md
      #                                     (`with import <nixpkgs> {}; ... buildInputs = [ openssl ]`)
      #   writeShellScript, writeShellScriptBin (sets meta.mainProgram)
      #                                     pkgs/build-support/trivial-builders/default.nix
      #   vulkan-loader (out: lib/libvulkan.so.1)
      #                                     pkgs/by-name/vu/vulkan-loader/package.nix (cmake install,
      #                                     SYSCONFDIR=/run/opengl-driver/share)
      #   nixfmt                            pkgs/by-name/ni/nixfmt/package.nix and
      #                                     doc/release-notes/rl-2511.section.md ("nixfmt is now stable
      #                                     and available as pkgs.nixfmt, deprecating pkgs.nixfmt-rfc-style")
      #   import nixpkgs { system; config.allowUnfreePredicate }
      #                                     pkgs/top-level/config.nix (allowUnfreePredicate),
      #                                     lib/strings.nix (lib.getName via parseDrvName)
      #   images/gpu-runner and nix/modules/flywheel-cache.nix: see their headers and docs/nix.md.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      workspace = builtins.fromTOML (builtins.readFile ./Cargo.toml);
      crate = builtins.fromTOML (builtins.readFile ./crates/flywheel/Cargo.toml);

      mkFlywheel =
        pkgs:
        let
          inherit (pkgs) lib;
        in
        pkgs.rustPlatform.buildRustPackage {
          pname = crate.package.name;
          # crates/flywheel takes its version from [workspace.package].
          version = workspace.workspace.package.version;

          # Only what cargo needs: docs/, nix/, images/, .ci/, bench/, fuzz/ (excluded
          # from the workspace), target/ and result links stay out, so changing them
          # does not rebuild. tests/ is in because tests/fixture is a workspace member
          # and crates/flywheel's [[test]] targets live in tests/e2e.
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./Cargo.toml
              ./Cargo.lock
              ./crates
              ./tests
            ];
          };

          # Every dependency is a crates.io crate pinned with a checksum in
          # Cargo.lock, so they are fetched as fixed-output derivations and the
          # build itself needs no network. (No git sources, so no outputHashes.)
          cargoLock.lockFile = ./Cargo.lock;

          cargoBuildFlags = [
            "-p"
            crate.package.name
          ];

          # The test suite needs Nix itself and a writable Nix store (it builds
          # fixture closures with nix and pushes them to a cache), which the build
          # sandbox does not provide. Tests run outside Nix: cargo test.
          doCheck = false;

          # No nativeBuildInputs or buildInputs: rusqlite's "bundled" feature builds
          # SQLite and zstd-sys builds zstd from source with the C compiler stdenv
          # already provides; neither uses pkg-config here.

          meta = {
            description = crate.package.description;
            homepage = workspace.workspace.package.repository;
            license = lib.licenses.asl20;
            mainProgram = "flywheel";
          };
        };

      # `flywheel canary ARGS` with its runtime needs. A binary Nix built does not search the
      # host's /usr/lib, so the Vulkan loader comes from nixpkgs (it finds the host's ICD files
      # in /usr/share/vulkan/icd.d and /run/opengl-driver/share); the NVIDIA libraries are found
      # by the canary itself, by SONAME, then in /run/opengl-driver/lib, /usr/local/nvidia/lib64,
      # /usr/lib/x86_64-linux-gnu and LD_LIBRARY_PATH (docs/canary.md, "Finding the driver").
      # The package (bin/flywheel-canary, for images and `nix profile`) and the app's program
      # (a single file, as tests/e2e/canary.rs checks) run the same text.
      canaryScript = pkgs: flywheel: ''
        export FLYWHEEL_VULKAN_LOADER="''${FLYWHEEL_VULKAN_LOADER:-${pkgs.vulkan-loader}/lib/libvulkan.so.1}"
        exec ${flywheel}/bin/flywheel canary "$@"
      '';
      mkCanary = pkgs: flywheel: pkgs.writeShellScriptBin "flywheel-canary" (canaryScript pkgs flywheel);

      # The NVIDIA driver is unfree: only the image gets a package set that accepts it, and
      # only for the driver's own derivations (nvidia-x11-*, nvidia-dc-*).
      pkgsWithNvidia =
        system:
        import nixpkgs {
          inherit system;
          config.allowUnfreePredicate =
            pkg:
            builtins.elem (nixpkgs.lib.getName pkg) [
              "nvidia-x11"
              "nvidia-dc"
            ];
        };
    in
    {
      # NVIDIA-specific outputs (gpu-runner-image) exist for x86_64-linux only. Plain
      # `if` rather than lib.optionalAttrs keeps the attribute names computable without
      # nixpkgs' lib beyond genAttrs (tests/e2e/canary.rs evaluates this with a stand-in).
      packages = forAllSystems (
        system: pkgs:
        let
          flywheel = mkFlywheel pkgs;
          canary = mkCanary pkgs flywheel;
        in
        {
          inherit flywheel canary;
          default = flywheel;
        }
        // (
          if system == "x86_64-linux" then
            {
              gpu-runner-image = import ./images/gpu-runner {
                pkgs = pkgsWithNvidia system;
                flywheelLib = self.lib;
                inherit flywheel canary;
                sourceRevision = self.rev or self.dirtyRev or null;
              };
            }
          else
            { }
        )
      );

      apps = forAllSystems (
        system: pkgs:
        let
          package = self.packages.${system}.flywheel;
          flywheel = {
            type = "app";
            program = "${package}/bin/flywheel";
          };
          # `nix run .#canary -- ARGS` is `flywheel canary ARGS`, with packages.canary's
          # environment: the same script text (canaryScript), as one file.
          canary = {
            type = "app";
            program = "${pkgs.writeShellScript "flywheel-canary" (canaryScript pkgs package)}";
          };
        in
        {
          inherit flywheel canary;
          default = flywheel;
        }
      );

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              rust-analyzer
              skopeo
              umoci
              zstd
              sqlite # first output is "bin": the sqlite3 CLI
              openssl
              hyperfine
            ];
          };
        }
      );

      formatter = forAllSystems (_system: pkgs: pkgs.nixfmt);

      # `nix flake check` builds flywheel, the canary and (x86_64-linux) the runner image;
      # the image needs the NVIDIA driver's kernel module built for nixpkgs' default kernel.
      checks = forAllSystems (
        system: _pkgs:
        {
          inherit (self.packages.${system}) flywheel canary;
        }
        // (
          if system == "x86_64-linux" then
            { inherit (self.packages.${system}) gpu-runner-image; }
          else
            { }
        )
      );

      # services.flywheel-cache: `flywheel cache serve` as a hardened systemd service, with
      # this flake's flywheel as the default package (docs/nix.md, "The NixOS module").
      nixosModules = {
        flywheel-cache =
          { lib, pkgs, ... }:
          {
            imports = [ ./nix/modules/flywheel-cache.nix ];
            services.flywheel-cache.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.flywheel;
          };
        default = self.nixosModules.flywheel-cache;
      };

      # The image pipeline library: Nix builtins only, no nixpkgs (nix/lib/README.md).
      lib = import ./nix/lib;
    };
}
