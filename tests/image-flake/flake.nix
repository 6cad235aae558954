# A flake that builds images with nix/lib's mkImage from small fixture derivations, using only
# Debian's Nix (no nixpkgs, no network). tests/e2e/image.rs copies this file into a temporary
# directory together with nix/lib (as ./lib) and a settings.json naming the cargo-built flywheel
# binary, then builds it with the sandbox off (the binary lives outside the store) and checks
# that `nix build` gives exactly the image `flywheel image build` gives for the same closure and
# config.
{
  description = "flywheel image tests: mkImage with fixture derivations";

  outputs =
    { self }:
    let
      settings = builtins.fromJSON (builtins.readFile ./settings.json);
      inherit (settings) system;
      flywheelLib = import ./lib;

      fixtures = import ./fixtures.nix {
        inherit system;
        inherit (settings) templateLibrary tag;
      };
      inherit (fixtures) sh;

      libgreet = sh "libgreet-1.0" ''
        mkdir -p "$out/lib" "$out/share/doc"
        printf 'greetings from %s\n' "$fixtureTag" > "$out/lib/libgreet.so.1"
        ln -s libgreet.so.1 "$out/lib/libgreet.so"
        head -c 200000 /dev/zero | tr '\000' 'g' > "$out/share/doc/big"
      '' { };

      app = sh "app-2.1" ''
        mkdir -p "$out/bin" "$out/etc"
        printf '#!/bin/sh\n# uses %s\necho app\n' "$libgreet/lib/libgreet.so" > "$out/bin/app"
        chmod 0755 "$out/bin/app"
        ln -s app "$out/bin/app-link"
        echo "$out" > "$out/etc/self"
      '' { inherit libgreet; };

      tool = sh "tool-0.3" ''
        mkdir -p "$out/bin"
        printf '#!/bin/sh\necho tool %s\n' "$libgreet" > "$out/bin/tool"
        chmod 0755 "$out/bin/tool"
      '' { inherit libgreet; };

      # A customisation tree: users, a world-writable /tmp, a home, symlinks into the store.
      custom = sh "custom" ''
        mkdir -p "$out/etc" "$out/tmp" "$out/home/runner" "$out/bin"
        echo 'root:x:0:0::/root:/bin/sh' > "$out/etc/passwd"
        echo 'runner:x:1001:1001::/home/runner:/bin/sh' >> "$out/etc/passwd"
        echo 'root:x:0:' > "$out/etc/group"
        echo 'runner:x:1001:' >> "$out/etc/group"
        ln -s "$app/bin/app" "$out/bin/app"
      '' { inherit app; };

      # A stand-in for nixpkgs' NVIDIA driver package (tests/fixtures.nix).
      inherit (fixtures) fakeDriver;

      driverLayer = flywheelLib.mkDriverLayer {
        flywheel = settings.flywheel;
        inherit system;
        driver = fakeDriver;
        version = "580.159.04";
      };

      # The app with the driver baked in, as the GPU runner image holds it.
      gpuImage = flywheelLib.mkImage {
        flywheel = settings.flywheel;
        inherit system;
        name = "flywheel/e2e-gpu";
        closureRoots = [ app ];
        layers = [
          {
            name = "nvidia-driver";
            driver = driverLayer;
          }
        ];
        config.Entrypoint = [ "${app}/bin/app" ];
      };

      # The image `flywheel image build --closure APP --layer CUSTOM:/ --entrypoint ... --env ...`
      # also writes: the directory layer is named as the CLI names it, after its directory.
      cliEquivalent = flywheelLib.mkImage {
        flywheel = settings.flywheel;
        inherit system;
        name = "flywheel/e2e";
        closureRoots = [ app ];
        layers = [
          {
            name = builtins.unsafeDiscardStringContext (baseNameOf custom.outPath);
            source = custom;
          }
        ];
        config = {
          Entrypoint = [ "${app}/bin/app" ];
          Env = [ "PATH=${app}/bin:/bin" ];
        };
      };

      # Everything the spec can say: a pinned layer, overrides, gzip, a layer limit.
      full = flywheelLib.mkImage {
        flywheel = settings.flywheel;
        inherit system;
        name = "flywheel/e2e-full";
        tag = "v1";
        closureRoots = [
          app
          tool
        ];
        layers = [
          {
            name = "libs";
            paths = [ libgreet ];
          }
          {
            name = "custom";
            source = custom;
            overrides = [
              {
                path = "/tmp";
                mode = "1777";
              }
              {
                path = "/home/runner";
                uid = 1001;
                gid = 1001;
                recursive = true;
              }
            ];
          }
        ];
        config = {
          Entrypoint = [ "${app}/bin/app" ];
          User = "1001:1001";
          WorkingDir = "/home/runner";
          Labels."org.example.purpose" = "test";
        };
        annotations."org.opencontainers.image.source" = "https://example.invalid/flywheel";
        created = "2025-12-29T17:14:27Z";
        sourceDateEpoch = 1767028467;
        maxLayers = 10;
        compression = "gzip";
      };
    in
    {
      packages.${system} = {
        inherit
          libgreet
          app
          tool
          custom
          cliEquivalent
          full
          fakeDriver
          driverLayer
          gpuImage
          ;
        default = cliEquivalent;
      };
      # The spec of `full`, for `nix eval --json` and `flywheel image build --spec`.
      specs.${system}.full = full.imageSpec;
    };
}
