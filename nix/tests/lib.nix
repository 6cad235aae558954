# Tests for nix/lib, builtins only (Debian's Nix 2.8 runs them offline):
#
#   nix-instantiate --eval --strict nix/tests/lib.nix
#
# Prints a summary on success; throws (non-zero exit) listing the failed cases.
let
  flywheel = import ../lib;
  inherit (flywheel) mkImageSpec mkImage mkDriverLayer ociArchitecture;

  # A fixture derivation: never built, only its output path is computed.
  fixture = builtins.derivation {
    name = "flywheel-test-fixture";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [
      "-c"
      "echo fixture > $out"
    ];
  };
  fixturePath = "${builtins.storeDir}/00000000000000000000000000000000-plain-path";

  minimal = mkImageSpec { name = "flywheel/gpu-runner"; };

  full = mkImageSpec {
    name = "flywheel/gpu-runner";
    closureRoots = [
      fixture
      fixturePath
    ];
    layers = [
      {
        name = "base";
        paths = [ fixturePath ];
      }
      {
        name = "custom";
        source = fixture;
        overrides = [
          {
            path = "/tmp";
            mode = "1777";
          }
        ];
      }
    ];
    config = {
      Env = [ "PATH=/bin" ];
      Cmd = [ "/bin/run.sh" ];
      User = "1001";
    };
    architecture = ociArchitecture "aarch64-linux";
    created = "2025-12-29T17:14:27Z";
    maxLayers = 50;
    compression = "gzip:6";
  };

  image = mkImage {
    flywheel = "/opt/flywheel";
    system = "x86_64-linux";
    name = "flywheel/test";
    closureRoots = [ fixture ];
    layers = [
      {
        name = "pinned";
        paths = [ fixturePath ];
      }
      {
        name = "custom";
        source = "${fixture}/etc";
        prefix = "/etc";
      }
    ];
    config.Entrypoint = [ "/bin/sh" ];
  };

  # A stand-in for nixpkgs' NVIDIA driver package: several outputs, lib32 among them.
  fakeDriver = builtins.derivation {
    name = "nvidia-x11-580.159.04";
    system = "x86_64-linux";
    builder = "/bin/sh";
    outputs = [
      "out"
      "lib32"
      "bin"
      "firmware"
    ];
  };

  driverLayer = mkDriverLayer {
    flywheel = "/opt/flywheel";
    system = "x86_64-linux";
    driver = fakeDriver;
    version = "580.159.04";
  };

  gpuImage = mkImage {
    flywheel = "/opt/flywheel";
    system = "x86_64-linux";
    name = "flywheel/gpu";
    layers = [
      {
        name = "nvidia";
        driver = driverLayer;
      }
    ];
  };

  # Does evaluating `x` deeply fail (throw or assert)?
  throws = x: !(builtins.tryEval (builtins.deepSeq x x)).success;

  cases = {
    minimalDefaults =
      minimal == {
        flywheelImageSpec = 1;
        name = "flywheel/gpu-runner";
        tag = "latest";
        architecture = "amd64";
        os = "linux";
        config = { };
        annotations = { };
        closureRoots = [ ];
        layers = [ ];
      };

    derivationRootBecomesOutPath = builtins.elemAt full.closureRoots 0 == fixture.outPath;
    storePathRootKept = builtins.elemAt full.closureRoots 1 == fixturePath;
    layerPathsNormalised = full.layers == [
      {
        name = "base";
        paths = [ fixturePath ];
      }
      {
        name = "custom";
        source = fixture.outPath;
        prefix = "/";
        overrides = [
          {
            path = "/tmp";
            mode = "1777";
          }
        ];
      }
    ];
    architectureFromSystem = full.architecture == "arm64";
    amd64FromSystem = ociArchitecture "x86_64-linux" == "amd64";

    # The JSON the Rust side reads round-trips to the same data (store paths as strings).
    # fromJSON refuses strings with context, hence the discard (test only).
    jsonRoundTrip =
      builtins.fromJSON (builtins.unsafeDiscardStringContext (builtins.toJSON full)) == {
        flywheelImageSpec = 1;
        name = "flywheel/gpu-runner";
        tag = "latest";
        architecture = "arm64";
        os = "linux";
        created = "2025-12-29T17:14:27Z";
        maxLayers = 50;
        compression = "gzip:6";
        annotations = { };
        config = {
          Env = [ "PATH=/bin" ];
          Cmd = [ "/bin/run.sh" ];
          User = "1001";
        };
        closureRoots = [
          (builtins.unsafeDiscardStringContext fixture.outPath)
          fixturePath
        ];
        layers = [
          {
            name = "base";
            paths = [ fixturePath ];
          }
          {
            name = "custom";
            source = builtins.unsafeDiscardStringContext fixture.outPath;
            prefix = "/";
            overrides = [
              {
                path = "/tmp";
                mode = "1777";
              }
            ];
          }
        ];
      };

    # The spec's JSON keeps the string context, so a derivation writing it depends on the roots.
    jsonKeepsRootContext = builtins.hasContext (builtins.toJSON full);

    rejectsUnknownArchitecture = throws (mkImageSpec {
      name = "x";
      architecture = "x86_64";
    });
    rejectsUnknownSystem = throws (ociArchitecture "riscv64-linux");
    rejectsOtherOs = throws (mkImageSpec {
      name = "x";
      os = "windows";
    });
    rejectsLayersNotAList = throws (mkImageSpec {
      name = "x";
      layers = {
        name = "base";
      };
    });
    rejectsLayerNotASet = throws (mkImageSpec {
      name = "x";
      layers = [ "base" ];
    });
    rejectsLayerWithoutName = throws (mkImageSpec {
      name = "x";
      layers = [ { paths = [ ]; } ];
    });
    rejectsLayerUnknownAttribute = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "base";
          contents = [ ];
        }
      ];
    });
    rejectsDuplicateLayerNames = throws (mkImageSpec {
      name = "x";
      layers = [
        { name = "a"; }
        { name = "a"; }
      ];
    });
    rejectsClosureRootsNotAList = throws (mkImageSpec {
      name = "x";
      closureRoots = fixture;
    });
    rejectsNonStorePathRoot = throws (mkImageSpec {
      name = "x";
      closureRoots = [ "/usr/bin" ];
    });
    rejectsLocalPathRoot = throws (mkImageSpec {
      name = "x";
      closureRoots = [ ./lib.nix ];
    });
    rejectsNonStoreLayerPath = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          paths = [ "relative/path" ];
        }
      ];
    });
    rejectsUnknownConfigKey = throws (mkImageSpec {
      name = "x";
      config.env = [ "A=1" ];
    });
    rejectsConfigNotASet = throws (mkImageSpec {
      name = "x";
      config = [ ];
    });
    rejectsMissingName = throws (mkImageSpec { closureRoots = [ ]; });
    rejectsUppercaseName = throws (mkImageSpec { name = "Flywheel"; });
    rejectsEmptyName = throws (mkImageSpec { name = ""; });
    rejectsNonUtcCreated = throws (mkImageSpec {
      name = "x";
      created = "2025-12-29T17:14:27+01:00";
    });
    rejectsUnexpectedArgument = throws (mkImageSpec {
      name = "x";
      label = "latest";
    });
    rejectsBadTag = throws (mkImageSpec {
      name = "x";
      tag = "-bad";
    });
    rejectsLayerWithPathsAndSource = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          paths = [ fixturePath ];
          source = fixture;
        }
      ];
    });
    rejectsLayerWithNeither = throws (mkImageSpec {
      name = "x";
      layers = [ { name = "a"; } ];
    });
    rejectsPrefixOnPathsLayer = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          paths = [ fixturePath ];
          prefix = "/";
        }
      ];
    });
    rejectsRelativePrefix = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          source = fixture;
          prefix = "etc";
        }
      ];
    });
    rejectsBadOverrideMode = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          source = fixture;
          overrides = [
            {
              path = "/tmp";
              mode = "rwx";
            }
          ];
        }
      ];
    });
    rejectsMaxLayersOutOfRange = throws (mkImageSpec {
      name = "x";
      maxLayers = 500;
    });
    rejectsUnknownLayering = throws (mkImageSpec {
      name = "x";
      layering = "random";
    });
    rejectsUnknownCompression = throws (mkImageSpec {
      name = "x";
      compression = "xz";
    });

    # mkImage: a derivation whose builder is flywheel, reading the closure through
    # exportReferencesGraph with structured attributes.
    imageIsADerivation = image.type == "derivation" && image.drvPath != "";
    imageBuilder = image.builder == "/opt/flywheel";
    imageArgs = image.args == [
      "image"
      "build"
      "--nix-attrs"
      "--format"
      "oci"
    ];
    imageStructuredAttrs = image.__structuredAttrs;
    imageExportsEveryInput =
      map builtins.unsafeDiscardStringContext image.exportReferencesGraph.closureGraph == [
        (builtins.unsafeDiscardStringContext fixture.outPath)
        fixturePath
        (builtins.unsafeDiscardStringContext "${fixture}/etc")
      ];
    imageCarriesTheSpec = image.flywheelSpec == image.imageSpec && image.imageSpec.name == "flywheel/test";
    imageNameFromSpec = image.name == "flywheel-test-image";
    imageTakesAPackage =
      (mkImage {
        flywheel = fixture;
        system = "x86_64-linux";
        name = "x";
      }).builder == "${fixture}/bin/flywheel";
    rejectsImageWithoutFlywheel = throws (mkImage { name = "x"; });

    # mkDriverLayer: `flywheel driver collect` over every driver output but lib32.
    driverLayerIsADerivation = driverLayer.type == "derivation" && driverLayer.builder == "/opt/flywheel";
    driverLayerArgs =
      map builtins.unsafeDiscardStringContext driverLayer.args == [
        "driver"
        "collect"
        "--no-nvml"
        "--arch"
        "amd64"
        "--capabilities"
        "utility,compute"
        "--out"
        (builtins.unsafeDiscardStringContext (builtins.placeholder "out"))
        "--expect-version"
        "580.159.04"
        "--driver-root"
        (builtins.unsafeDiscardStringContext fakeDriver.out.outPath)
        "--driver-root"
        (builtins.unsafeDiscardStringContext fakeDriver.bin.outPath)
        "--driver-root"
        (builtins.unsafeDiscardStringContext fakeDriver.firmware.outPath)
      ];
    driverLayerNamedForItsVersion = driverLayer.name == "nvidia-driver-layer-580.159.04";
    driverLayerTakesStorePaths =
      builtins.elem fixturePath
        (mkDriverLayer {
          flywheel = "/opt/flywheel";
          system = "aarch64-linux";
          driver = [ fixturePath ];
          capabilities = [ "all" ];
        }).args;
    driverLayerArchFromSystem = builtins.elem "arm64" (mkDriverLayer {
      flywheel = "/opt/flywheel";
      system = "aarch64-linux";
      driver = fixturePath;
    }).args;
    rejectsDriverLayerUnknownCapability = throws (mkDriverLayer {
      flywheel = "/opt/flywheel";
      driver = fakeDriver;
      capabilities = [ "gaming" ];
    });
    rejectsDriverLayerBadVersion = throws (mkDriverLayer {
      flywheel = "/opt/flywheel";
      driver = fakeDriver;
      version = "latest";
    });
    rejectsDriverLayerWithoutDriver = throws (mkDriverLayer { flywheel = "/opt/flywheel"; });
    rejectsDriverLayerNonStoreRoot = throws (mkDriverLayer {
      flywheel = "/opt/flywheel";
      driver = "/usr/local/nvidia";
    });
    rejectsDriverLayerUnknownArgument = throws (mkDriverLayer {
      flywheel = "/opt/flywheel";
      driver = fakeDriver;
      capability = [ "utility" ];
    });

    # A driver layer in an image: in the spec as `driver`, exported for its references.
    imageSpecDriverLayer =
      map (l: builtins.mapAttrs (_: builtins.unsafeDiscardStringContext) l) gpuImage.imageSpec.layers == [
        {
          name = "nvidia";
          driver = builtins.unsafeDiscardStringContext driverLayer.outPath;
        }
      ];
    imageExportsTheDriverLayer =
      map builtins.unsafeDiscardStringContext gpuImage.exportReferencesGraph.closureGraph == [
        (builtins.unsafeDiscardStringContext driverLayer.outPath)
      ];
    rejectsDriverLayerWithSource = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          driver = fixturePath;
          source = fixturePath;
        }
      ];
    });
    rejectsTwoDriverLayers = throws (mkImageSpec {
      name = "x";
      layers = [
        {
          name = "a";
          driver = fixturePath;
        }
        {
          name = "b";
          driver = fixturePath;
        }
      ];
    });
    rejectsImageFormat = throws (mkImage {
      flywheel = "/opt/flywheel";
      name = "x";
      format = "tarball";
    });
  };

  names = builtins.attrNames cases;
  failures = builtins.filter (n: cases.${n} != true) names;
in
if failures != [ ] then
  throw "nix/tests/lib.nix: ${toString (builtins.length failures)} of ${toString (builtins.length names)} failed: ${builtins.concatStringsSep ", " failures}"
else
  "nix/tests/lib.nix: all ${toString (builtins.length names)} cases passed"
