# Tests for nix/lib, builtins only (Debian's Nix 2.8 runs them offline):
#
#   nix-instantiate --eval --strict nix/tests/lib.nix
#
# Prints a summary on success; throws (non-zero exit) listing the failed cases.
let
  flywheel = import ../lib;
  inherit (flywheel)
    mkImageSpec
    mkImage
    mkDriverLayer
    mkTree
    mkRunnerImage
    ociArchitecture
    ;

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

  # mkTree and mkRunnerImage, from fixture derivations standing in for the runner, bash, git.
  fx =
    name:
    builtins.derivation {
      inherit name;
      system = "x86_64-linux";
      builder = "/bin/sh";
    };
  runnerPkg = fx "github-runner";
  bashPkg = fx "bash";
  gitPkg = fx "git";
  caPkg = fx "cacert";

  tree = mkTree {
    flywheel = "/opt/flywheel";
    system = "x86_64-linux";
    name = "t";
    entries = [
      {
        path = "/home/runner/run.sh";
        text = "#!/bin/sh\n";
        mode = "0755";
      }
      {
        path = "/bin/sh";
        symlink = "${bashPkg}/bin/bash";
      }
      {
        path = "/tmp";
        directory = true;
      }
    ];
  };
  treeWith =
    entries:
    mkTree {
      flywheel = "/opt/flywheel";
      system = "x86_64-linux";
      name = "t";
      inherit entries;
    };

  runnerArgs = {
    flywheel = "/opt/flywheel";
    system = "x86_64-linux";
    runner = "${runnerPkg}/bin/Runner.Listener";
    shell = "${bashPkg}/bin/bash";
    packages = [
      gitPkg
      bashPkg
    ];
  };
  runnerPlain = mkRunnerImage runnerArgs;
  runnerFull = mkRunnerImage (
    runnerArgs
    // {
      driverLayer = driverLayer;
      caBundle = "${caPkg}/etc/ssl/certs/ca-bundle.crt";
      cacheUrl = "http://cache.lane:8080/main";
      cachePublicKey = "lane-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
      sourceRevision = "0123abcd";
      extraEnv.FOO = "bar";
      labels."org.example.team" = "gpu";
      tag = "v2";
      compression = "gzip";
    }
  );
  runnerCfg = img: img.imageSpec.config;
  runnerTreeText =
    img: path: (builtins.head (builtins.filter (e: e.path == path) img.runnerTree.flywheelTree)).text;
  hasEnv = img: e: builtins.elem e (runnerCfg img).Env;
  envNames = img: map (e: builtins.head (builtins.match "([^=]*)=.*" e)) (runnerCfg img).Env;
  lines = s: builtins.filter (l: builtins.isString l && l != "") (builtins.split "\n" s);

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

    nixStorePassedThrough =
      (mkImageSpec {
        name = "x";
        nixStore = {
          owner = {
            uid = 1001;
            gid = 1002;
          };
          registration = true;
        };
      }).nixStore == {
        owner = {
          uid = 1001;
          gid = 1002;
        };
        registration = true;
      };
    nixStoreAbsentByDefault = !(minimal ? nixStore);
    rejectsNixStoreNotASet = throws (mkImageSpec {
      name = "x";
      nixStore = "1001";
    });
    rejectsNixStoreUnknownAttribute = throws (mkImageSpec {
      name = "x";
      nixStore.ownr = { };
    });
    rejectsNixStoreOwnerWithoutGid = throws (mkImageSpec {
      name = "x";
      nixStore.owner.uid = 1001;
    });
    rejectsNixStoreNegativeUid = throws (mkImageSpec {
      name = "x";
      nixStore.owner = {
        uid = -1;
        gid = 1;
      };
    });
    rejectsNixStoreRegistrationNotABool = throws (mkImageSpec {
      name = "x";
      nixStore.registration = "yes";
    });
    rejectsNixDbLayerNameWithRegistration = throws (mkImageSpec {
      name = "x";
      nixStore.registration = true;
      layers = [
        {
          name = "nix-db";
          source = fixture;
        }
      ];
    });
    runnerStoreOwnedAndRegistered =
      runnerPlain.imageSpec.nixStore == {
        owner = {
          uid = 1001;
          gid = 1001;
        };
        registration = true;
      }
      && (mkRunnerImage (runnerArgs // { uid = 2000; gid = 2001; })).imageSpec.nixStore.owner == {
        uid = 2000;
        gid = 2001;
      };
    runnerRunShLoadsTheNixDb =
      builtins.match ''.*if \[ ! -e /nix/var/nix/db/db.sqlite ] && \[ -e /nix/.flywheel-registration ]; then.*command -v nix-store.*nix-store --load-db < /nix/.flywheel-registration.*[^ ]*/bin/Runner.Listener run "\$@" &.*''
        (runnerTreeText runnerPlain "/home/runner/run.sh") != null;
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
    # ---- mkTree ----
    treeBuiltByFlywheel =
      tree.builder == "/opt/flywheel"
      && tree.args == [
        "image"
        "tree"
        "--nix-attrs"
      ]
      && tree.__structuredAttrs;
    treeCarriesTheEntries = builtins.length tree.flywheelTree == 3 && (builtins.elemAt tree.flywheelTree 2).directory;
    rejectsTreeRelativePath = throws (treeWith [
      {
        path = "etc/passwd";
        text = "";
      }
    ]);
    rejectsTreeDotDot = throws (treeWith [
      {
        path = "/etc/../passwd";
        text = "";
      }
    ]);
    rejectsTreeTwoKinds = throws (treeWith [
      {
        path = "/a";
        text = "";
        symlink = "b";
      }
    ]);
    rejectsTreeNoKind = throws (treeWith [ { path = "/a"; } ]);
    rejectsTreeBadMode = throws (treeWith [
      {
        path = "/a";
        text = "";
        mode = "rwx";
      }
    ]);
    rejectsTreeSymlinkMode = throws (treeWith [
      {
        path = "/a";
        symlink = "b";
        mode = "0755";
      }
    ]);
    rejectsTreeDuplicates = throws (treeWith [
      {
        path = "/a";
        text = "";
      }
      {
        path = "/a";
        directory = true;
      }
    ]);
    rejectsTreeUnknownAttribute = throws (treeWith [
      {
        path = "/a";
        text = "";
        owner = 0;
      }
    ]);
    rejectsTreeWithoutName = throws (mkTree {
      flywheel = "/opt/flywheel";
      entries = [ ];
    });
    rejectsTreeEntriesNotAList = throws (treeWith { });

    # ---- mkRunnerImage ----
    runnerDefaults =
      runnerPlain.imageSpec.name == "flywheel/gpu-runner"
      && runnerPlain.imageSpec.tag == "latest"
      && runnerPlain.name == "flywheel-gpu-runner-image"
      && runnerPlain.flywheelSpec == runnerPlain.imageSpec;
    runnerConfigWithoutDriverOrCache =
      runnerCfg runnerPlain == {
        User = "1001:1001";
        WorkingDir = "/home/runner";
        Entrypoint = [ "/home/runner/run.sh" ];
        Env = [
          "PATH=${gitPkg}/bin:${bashPkg}/bin"
          "HOME=/home/runner"
          "USER=runner"
          "RUNNER_ROOT=/home/runner"
          "ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1"
          "LANG=C.UTF-8"
          "ACTIONS_RUNNER_HOOK_JOB_STARTED=/home/runner/hooks/job-started.sh"
          "ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/home/runner/hooks/job-completed.sh"
        ];
        Labels."dev.flywheel.runner.user" = "runner";
      };
    runnerLayersWithoutDriver =
      map (l: l.name) runnerPlain.imageSpec.layers == [ "runner" ]
      && (builtins.head runnerPlain.imageSpec.layers).source == runnerPlain.runnerTree.outPath
      && (builtins.head runnerPlain.imageSpec.layers).overrides == [
        {
          path = "/tmp";
          mode = "1777";
        }
        {
          path = "/root";
          mode = "0700";
        }
        {
          path = "/home/runner";
          mode = "0755";
          uid = 1001;
          gid = 1001;
          recursive = true;
        }
      ];
    runnerClosureRoots = runnerPlain.imageSpec.closureRoots == [
      gitPkg.outPath
      bashPkg.outPath
      runnerPkg.outPath
    ];
    runnerNixConfWithoutCache =
      lines (runnerTreeText runnerPlain "/etc/nix/nix.conf") == [
        "# Written by flywheel's mkRunnerImage: single-user Nix as the runner user."
        "experimental-features = nix-command flakes"
        "build-users-group ="
        "sandbox = false"
      ];
    runnerHookWithoutDriverSkips =
      builtins.match ".*exec /opt/flywheel lane hook job-started --no-driver\n" (runnerTreeText runnerPlain "/home/runner/hooks/job-started.sh")
      != null;
    runnerRunShStartsTheRunner =
      builtins.elem "  ${runnerPkg}/bin/Runner.Listener run \"$@\" &" (lines (runnerTreeText runnerPlain "/home/runner/run.sh"))
      && builtins.substring 0 2 (runnerTreeText runnerPlain "/home/runner/run.sh") == "#!";
    runnerPasswd =
      lines (runnerTreeText runnerPlain "/etc/passwd") == [
        "root:x:0:0:root:/root:${bashPkg}/bin/bash"
        "runner:x:1001:1001:runner:/home/runner:${bashPkg}/bin/bash"
      ]
      && lines (runnerTreeText runnerPlain "/etc/group") == [
        "root:x:0:"
        "runner:x:1001:"
      ];
    runnerConfigWithDriverAndCache =
      envNames runnerFull == [
        "PATH"
        "HOME"
        "USER"
        "RUNNER_ROOT"
        "ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT"
        "LANG"
        "ACTIONS_RUNNER_HOOK_JOB_STARTED"
        "ACTIONS_RUNNER_HOOK_JOB_COMPLETED"
        "SSL_CERT_FILE"
        "NIX_SSL_CERT_FILE"
        "GIT_SSL_CAINFO"
        "FLYWHEEL_CACHE_URL"
        "FOO"
      ]
      && hasEnv runnerFull "FLYWHEEL_CACHE_URL=http://cache.lane:8080/main"
      && hasEnv runnerFull "GIT_SSL_CAINFO=${caPkg}/etc/ssl/certs/ca-bundle.crt"
      && (runnerCfg runnerFull).Labels == {
        "dev.flywheel.runner.user" = "runner";
        "org.opencontainers.image.revision" = "0123abcd";
        "org.example.team" = "gpu";
      }
      && runnerFull.imageSpec.tag == "v2"
      && runnerFull.imageSpec.compression == "gzip";
    # Debian's and Fedora's CA bundle paths, for programs that do not read SSL_CERT_FILE.
    runnerCaBundleAtDistroPaths =
      let
        link = img: path: (builtins.head (builtins.filter (e: e.path == path) img.runnerTree.flywheelTree)).symlink or null;
      in
      link runnerFull "/etc/ssl/certs/ca-certificates.crt" == "${caPkg}/etc/ssl/certs/ca-bundle.crt"
      && link runnerFull "/etc/pki/tls/certs/ca-bundle.crt" == "${caPkg}/etc/ssl/certs/ca-bundle.crt"
      && !(builtins.any (e: e.path == "/etc/ssl/certs/ca-certificates.crt") runnerPlain.runnerTree.flywheelTree);
    # `#!/usr/bin/env bash`: /usr/bin/env when envProgram is given, and only a store path.
    runnerUsrBinEnv =
      let
        withEnv = mkRunnerImage (runnerArgs // { envProgram = "${caPkg}/bin/env"; });
      in
      builtins.any (e: e.path == "/usr/bin/env" && e.symlink == "${caPkg}/bin/env") withEnv.runnerTree.flywheelTree
      && !(builtins.any (e: e.path == "/usr/bin/env") runnerPlain.runnerTree.flywheelTree)
      && builtins.elem caPkg.outPath withEnv.imageSpec.closureRoots
      && !(builtins.elem caPkg.outPath runnerPlain.imageSpec.closureRoots)
      && throws (mkRunnerImage (runnerArgs // { envProgram = "/usr/bin/env"; })).imageSpec;
    # The loader binaries built elsewhere ask for, at the system's path, in the image.
    runnerFhsLoader =
      let
        x86 = mkRunnerImage (runnerArgs // { fhsLoader = "${caPkg}/libexec/nix-ld"; });
        arm = mkRunnerImage (runnerArgs // { fhsLoader = "${caPkg}/libexec/nix-ld"; system = "aarch64-linux"; });
        at = img: path: builtins.filter (e: e.path == path) img.runnerTree.flywheelTree;
      in
      (builtins.head (at x86 "/lib64/ld-linux-x86-64.so.2")).symlink == "${caPkg}/libexec/nix-ld"
      && (builtins.head (at arm "/lib/ld-linux-aarch64.so.1")).symlink == "${caPkg}/libexec/nix-ld"
      && builtins.elem caPkg.outPath x86.imageSpec.closureRoots
      && at runnerPlain "/lib64/ld-linux-x86-64.so.2" == [ ]
      # Libraries for it: in the image, not on PATH.
      && (
        let
          withLibs = mkRunnerImage (runnerArgs // { extraClosure = [ "${caPkg}/lib" ]; });
        in
        builtins.elem caPkg.outPath withLibs.imageSpec.closureRoots
        && (runnerCfg withLibs).Env == (runnerCfg runnerPlain).Env
      )
      && throws (mkRunnerImage (runnerArgs // { extraClosure = [ "/usr/lib" ]; })).imageSpec
      && throws (mkRunnerImage (runnerArgs // { fhsLoader = "/lib64/ld-linux-x86-64.so.2"; })).imageSpec;
    # ARC's container hooks where kubernetes mode looks for them, labelled for `lane check`.
    runnerContainerHooks =
      let
        hooks = fx "runner-container-hooks-k8s" // { version = "0.8.1"; };
        withHooks = mkRunnerImage (runnerArgs // { containerHooks = hooks; });
        at = img: builtins.filter (e: e.path == "/home/runner/k8s") img.runnerTree.flywheelTree;
        label = img: (runnerCfg img).Labels."dev.flywheel.runner.container-hooks" or null;
      in
      (builtins.head (at withHooks)).symlink == hooks.outPath
      && builtins.elem hooks.outPath withHooks.imageSpec.closureRoots
      && label withHooks == "0.8.1"
      && label (mkRunnerImage (runnerArgs // { containerHooks = "${caPkg}"; })) == "unversioned"
      && at runnerPlain == [ ]
      && label runnerPlain == null
      && throws (mkRunnerImage (runnerArgs // { containerHooks = "/home/runner/k8s"; })).imageSpec;
    runnerLayersWithDriver =
      map (l: l.name) runnerFull.imageSpec.layers == [
        "nvidia-driver"
        "runner"
      ]
      && (builtins.head runnerFull.imageSpec.layers).driver == driverLayer.outPath
      && builtins.elem caPkg.outPath runnerFull.imageSpec.closureRoots;
    runnerNixConfWithCache =
      builtins.elem "extra-substituters = http://cache.lane:8080/main" (lines (runnerTreeText runnerFull "/etc/nix/nix.conf"))
      && builtins.elem "extra-trusted-public-keys = lane-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" (
        lines (runnerTreeText runnerFull "/etc/nix/nix.conf")
      );
    runnerHookWithDriverChecks =
      builtins.match ".*exec /opt/flywheel lane hook job-started\n" (runnerTreeText runnerFull "/home/runner/hooks/job-started.sh")
      != null;
    runnerHookPushesToTheCache =
      let
        t = runnerTreeText runnerFull "/home/runner/hooks/job-completed.sh";
      in
      builtins.match ".*/opt/flywheel lane hook job-completed \\|\\| echo.*exit 0\n" t != null
      && builtins.match ".*export FLYWHEEL_CACHE_URL=\"\\$\\{FLYWHEEL_CACHE_URL:-http://cache.lane:8080/main}\".*" t != null;
    runnerDriverLayerAsALayer =
      map (l: l.name) (mkRunnerImage (runnerArgs // {
        driverLayer = {
          name = "nvidia-580";
          driver = driverLayer;
        };
      })).imageSpec.layers == [
        "nvidia-580"
        "runner"
      ];
    runnerCustomUser =
      (runnerCfg (mkRunnerImage (runnerArgs // {
        user = "ci";
        uid = 2000;
        gid = 3000;
      }))).User == "2000:3000";
    rejectsRunnerCacheUrlWithoutKey = throws (mkRunnerImage (runnerArgs // { cacheUrl = "http://cache:8080/main"; }));
    rejectsRunnerKeyWithoutCacheUrl = throws (mkRunnerImage (runnerArgs // { cachePublicKey = "k-1:AAAA"; }));
    rejectsRunnerBadCacheUrl = throws (mkRunnerImage (runnerArgs // {
      cacheUrl = "cache:8080";
      cachePublicKey = "k-1:AAAA";
    }));
    rejectsRunnerWithoutRunner = throws (mkRunnerImage (removeAttrs runnerArgs [ "runner" ]));
    rejectsRunnerWithoutShell = throws (mkRunnerImage (removeAttrs runnerArgs [ "shell" ]));
    rejectsRunnerWithoutFlywheel = throws (mkRunnerImage (removeAttrs runnerArgs [ "flywheel" ]));
    rejectsRunnerRunnerOutsideTheStore = throws (mkRunnerImage (runnerArgs // { runner = "/usr/bin/Runner.Listener"; }));
    rejectsRunnerPackagesNotAList = throws (mkRunnerImage (runnerArgs // { packages = gitPkg; }));
    rejectsRunnerRootUser = throws (mkRunnerImage (runnerArgs // { user = "root"; }));
    rejectsRunnerBadUid = throws (mkRunnerImage (runnerArgs // { uid = "1001"; }));
    rejectsRunnerUnknownArgument = throws (mkRunnerImage (runnerArgs // { cachePublicKeys = [ ]; }));
    rejectsRunnerBadExtraEnv = throws (mkRunnerImage (runnerArgs // { extraEnv.N = 1; }));
    rejectsRunnerBadLabels = throws (mkRunnerImage (runnerArgs // { labels.x = true; }));
    rejectsRunnerBadDriverLayer = throws (mkRunnerImage (runnerArgs // { driverLayer = "nvidia"; }));
    rejectsRunnerBadFormat = throws (mkRunnerImage (runnerArgs // { format = "tarball"; }));
    rejectsRunnerBadName = throws (mkRunnerImage (runnerArgs // { name = "Runner"; }));
  };

  names = builtins.attrNames cases;
  failures = builtins.filter (n: cases.${n} != true) names;
in
if failures != [ ] then
  throw "nix/tests/lib.nix: ${toString (builtins.length failures)} of ${toString (builtins.length names)} failed: ${builtins.concatStringsSep ", " failures}"
else
  "nix/tests/lib.nix: all ${toString (builtins.length names)} cases passed"
