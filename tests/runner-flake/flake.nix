# A flake that builds GitHub Actions runner images with nix/lib's mkRunnerImage from fixture
# derivations, using only Debian's Nix (no nixpkgs, no network). tests/e2e/runner_image.rs copies
# this file into a temporary directory together with nix/lib (as ./lib) and a settings.json, passes
# the cargo-built flywheel with `--override-input flywheel`, then builds it with the sandbox off and
# checks the image against `flywheel image build --spec`. ./quickstart
# builds it the same way, with settings naming its own cache (cacheUrl, cachePublicKey).
{
  description = "flywheel runner image tests: mkRunnerImage with fixture derivations";

  # The flywheel the builders and the hooks run: a folder with bin/flywheel, always given with
  # `--override-input flywheel path:DIR` (the tests and ./quickstart pass a copy of the
  # cargo-built binary, which the flake patches to its own loader and libraries).
  inputs.flywheel = {
    url = "path:/nonexistent/override-with--override-input-flywheel";
    flake = false;
  };

  outputs =
    { self, flywheel }:
    let
      settings = builtins.fromJSON (builtins.readFile ./settings.json);
      inherit (settings) system;
      flywheelLib = import ./lib;

      fixtures = import ./fixtures.nix {
        inherit system;
        inherit (settings) templateLibrary tag;
      };
      inherit (fixtures) sh;

      # The host's programs the image carries (bash, the tools jobs expect, real git, curl and
      # Nix, and flywheel for the hooks and builders), copied into the store with Debian's loader
      # and libraries beside them: nothing in the image resolves from the host, as with nixpkgs'
      # builds. Debian keeps them all in /usr/bin (merged /usr).
      tools = [
        "env" "cat" "mkdir" "ls" "cp" "mv" "rm" "chmod" "ln" "id" "head" "tail" "tr" "wc" "sort"
        "date" "uname" "readlink" "dirname" "basename" "mktemp" "touch" "sleep" "tee"
        "sha256sum" "tar" "gzip" "xz" "grep" "sed"
      ];
      hostPath = p: "/usr/bin/${p}";
      libs = fixtures.hostLibs (
        [
          "/bin/bash"
          "${flywheel}/bin/flywheel"
        ]
        ++ map hostPath (tools ++ [ "git" "curl" "nix" ])
      );
      flywheelPkg = fixtures.selfContained "flywheel" "${flywheel}/bin/flywheel" libs;
      flywheelBin = "${flywheelPkg}/bin/flywheel";

      # Stand-ins for nixpkgs' github-runner, bash, git, nix and cacert.
      runner = sh "github-runner-2.330.0" ''
        mkdir -p "$out/bin"
        # Says how it was started; FIXTURE_EXITS names a file of exit codes, used one per start.
        cat > "$out/bin/Runner.Listener" <<'EOF'
        #!/bin/sh
        echo "Runner.Listener $*"
        echo "jitconfig=$ACTIONS_RUNNER_INPUT_JITCONFIG"
        [ -z "$FLYWHEEL_EXTRA_CA" ] || echo "ssl=$SSL_CERT_FILE node=$NODE_EXTRA_CA_CERTS"
        # FIXTURE_JOB names a job's script: run as the runner runs a job, between its hooks, in
        # the directories the runner gives a job under $RUNNER_ROOT/_work.
        if [ -n "$FIXTURE_JOB" ]; then
          work="$RUNNER_ROOT/_work"
          export GITHUB_WORKSPACE="$work/repo/repo" RUNNER_TEMP="$work/_temp" \
            RUNNER_TOOL_CACHE="$work/_tool" GITHUB_EVENT_NAME=push
          mkdir -p "$GITHUB_WORKSPACE" "$RUNNER_TEMP" "$RUNNER_TOOL_CACHE"
          cd "$GITHUB_WORKSPACE"
          "$ACTIONS_RUNNER_HOOK_JOB_STARTED" || { echo "listener: job-started hook failed: job not run"; exit 0; }
          code=0
          "$FIXTURE_JOB" || code=$?
          echo "listener: job exited $code"
          "$ACTIONS_RUNNER_HOOK_JOB_COMPLETED"
          exit 0
        fi
        if [ -n "$FIXTURE_EXITS" ]; then
          read -r code rest < "$FIXTURE_EXITS"
          echo "$rest" > "$FIXTURE_EXITS"
          if [ "$code" = wait ]; then
            trap 'echo "listener got TERM"; exit 0' TERM
            echo "listener waiting"
            while :; do sleep 0.1; done
          fi
          exit "$code"
        fi
        EOF
        chmod 0755 "$out/bin/Runner.Listener"
      '' { };
      bash = fixtures.selfContained "bash-5.2" "/bin/bash" libs;
      # Debian's git (upload-pack as git runs it for local clones), curl, and Nix with the names
      # its one binary answers to.
      git = fixtures.hostTools "git-2.39" [ (hostPath "git") ] [ "git-upload-pack=git" "git-receive-pack=git" ] libs;
      curl = fixtures.hostTools "curl-7.88" [ (hostPath "curl") ] [ ] libs;
      nix = fixtures.hostTools "nix-2.8" [ (hostPath "nix") ] (
        map (n: "${n}=nix") [ "nix-build" "nix-store" "nix-instantiate" "nix-env" "nix-hash" ]
        ++ [ "../libexec/nix/build-remote=../../bin/nix" ]
      ) libs;
      coreutils = fixtures.hostTools "coreutils-9.1" (map hostPath tools) [ ] libs;
      # ARC's container hooks for kubernetes mode: an index.js the runner would run with its Node.
      containerHooks = sh "runner-container-hooks-k8s-0.8.1" ''
        mkdir -p "$out"
        printf '// a stand-in for actions/runner-container-hooks (k8s) %s\n' "$fixtureTag" > "$out/index.js"
      '' { } // { version = "0.8.1"; };
      # nix-ld's stand-in, and the loader and libraries it gives programs built elsewhere.
      nixLd = fixtures.nixLd;
      cacert = sh "cacert-3.100" ''
        mkdir -p "$out/etc/ssl/certs"
        printf '# a CA bundle fixture %s\n' "$fixtureTag" > "$out/etc/ssl/certs/ca-bundle.crt"
      '' { };

      # A stand-in for nixpkgs' NVIDIA driver package (tests/fixtures.nix).
      inherit (fixtures) fakeDriver;

      driverLayer = flywheelLib.mkDriverLayer {
        flywheel = flywheelBin;
        inherit system;
        driver = fakeDriver;
        version = "580.159.04";
      };

      common = {
        flywheel = flywheelBin;
        inherit system;
        runner = "${runner}/bin/Runner.Listener";
        shell = "${bash}/bin/bash";
        packages = [
          git
          nix
          bash
          coreutils
          curl
          flywheelPkg
        ];
        envProgram = "${coreutils}/bin/env";
      };

      # The GPU runner: driver layer, CA bundle, the lane's cache.
      gpu-runner-image = flywheelLib.mkRunnerImage (
        common
        // {
          inherit driverLayer;
          caBundle = "${cacert}/etc/ssl/certs/ca-bundle.crt";
          # ./quickstart names its own running cache here; the tests use these stand-ins.
          cacheUrl = settings.cacheUrl or "http://cache.lane.invalid:8080/main";
          cachePublicKey = settings.cachePublicKey or "lane-1:Z2F0ZXdheS1maXh0dXJlLWtleS1ub3QtYS1yZWFsLW9uZQ==";
          sourceRevision = "0123456789abcdef0123456789abcdef01234567";
          labels."org.example.purpose" = "e2e";
          extraEnv = {
            RUNNER_ALLOW_RUNASROOT = "0";
            NIX_LD = "${libs}/lib/ld-linux-x86-64.so.2";
            NIX_LD_LIBRARY_PATH = "${libs}/lib";
            # Debian's Nix looks for its build hook at /usr/libexec/nix/build-remote, outside
            # the image (nixpkgs' Nix finds its own in the store).
            NIX_CONFIG = "build-hook = ${nix}/libexec/nix/build-remote";
          };
          # nix-ld's stand-in is x86-64 code.
          fhsLoader = if system == "x86_64-linux" then "${nixLd}/libexec/nix-ld" else null;
          extraClosure = [ libs ];
          inherit containerHooks;
          sourceDateEpoch = 1767028467;
          # umoci 0.4 (Debian 12), which the test unpacks it with, predates zstd layers.
          compression = "gzip";
        }
      );

      # A runner without a driver layer or a cache.
      plain-runner-image = flywheelLib.mkRunnerImage (common // { name = "flywheel/plain-runner"; });
    in
    {
      packages.${system} = {
        inherit
          runner
          bash
          git
          nix
          curl
          coreutils
          nixLd
          containerHooks
          cacert
          fakeDriver
          driverLayer
          gpu-runner-image
          plain-runner-image
          ;
        gpu-runner-tree = gpu-runner-image.runnerTree;
        flywheel = flywheelPkg;
        debian-libs = libs;
        default = gpu-runner-image;
      };
      # The specs, for `nix eval --json` and `flywheel image build --spec`.
      specs.${system} = {
        gpu-runner-image = gpu-runner-image.imageSpec;
        plain-runner-image = plain-runner-image.imageSpec;
      };
    };
}
