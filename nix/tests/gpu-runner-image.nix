# images/gpu-runner evaluated against the real nix/lib with a stand-in for nixpkgs (nothing here
# can fetch nixpkgs): each package is a derivation-shaped attribute set over a store path that
# builtins.toFile makes, and linuxPackages.nvidiaPackages.mkDriver checks the arguments it is
# given. What this proves: images/gpu-runner calls mkRunnerImage and mkDriverLayer with
# arguments they accept, and the image it describes has the runner user, the layers, the
# labels, the lane's cache and Nix usable as the runner. What it cannot: that nixpkgs has these
# packages at the pin (docs/nix.md lists the files checked for that).
#
#   nix-instantiate --eval --strict --read-write-mode nix/tests/gpu-runner-image.nix
let
  flywheelLib = import ../lib;
  drv = name: {
    type = "derivation";
    inherit name;
    version = "2.330.0";
    outPath = builtins.toFile name "stand-in for nixpkgs' ${name}";
    drvPath = builtins.toFile "${name}.drv" "";
  };
  driverArgs = [
    "version"
    "url"
    "sha256_64bit"
    "openSha256"
    "persistencedSha256"
    "fabricmanagerSha256"
    "useFabricmanager"
    "usePersistenced"
    "useSettings"
  ];
  # The tools jobs call without asking (docs/runner-image.md).
  tools = [
    "curl"
    "jq"
    "unzip"
    "xz"
    "gnugrep"
    "gnused"
    "gawk"
    "findutils"
    "diffutils"
    "which"
    "procps"
    "hostname-debian"
    "git-lfs"
    "openssh"
    "file"
    "less"
  ];
  # The libraries nix-ld offers binaries built elsewhere; openssl with a `lib` output, as in
  # nixpkgs' multiple-output packages.
  fhsLibs = [
    "zlib"
    "attr"
    "libssh"
    "bzip2"
    "libxml2"
    "acl"
    "libsodium"
    "util-linux"
  ];
  glibc = drv "glibc";
  pkgs = {
    stdenv.hostPlatform.system = "x86_64-linux";
    stdenv.cc.cc = drv "gcc-cc";
    stdenv.cc.bintools.dynamicLinker = "${glibc}/lib/ld-linux-x86-64.so.2";
    nix-ld = drv "nix-ld";
    openssl = drv "openssl" // {
      lib = drv "openssl-lib";
    };
    github-runner = drv "github-runner";
    bashInteractive = drv "bash";
    coreutils = drv "coreutils";
    gitMinimal = drv "git";
    gnutar = drv "gnutar";
    gzip = drv "gzip";
    zstd = drv "zstd";
    nix = drv "nix";
    cacert = drv "cacert";
    # As nixpkgs': fetchurl of a URL with its SHA-256; runCommand NAME ENV SCRIPT, with ENV's
    # passthru on the result.
    fetchurl =
      args:
      assert builtins.attrNames args == [ "sha256" "url" ];
      drv (baseNameOf args.url) // { inherit (args) url sha256; };
    runCommand =
      name: env: script:
      drv name // (env.passthru or { }) // { inherit env script; };
  }
  // builtins.listToAttrs (
    map (n: {
      name = n;
      value = drv n;
    }) (tools ++ fhsLibs)
  )
  // {
    linuxPackages.nvidiaPackages.mkDriver =
      args:
      assert builtins.all (a: builtins.elem a driverArgs) (builtins.attrNames args);
      drv "nvidia-dc-${args.version}"
      // {
        outputs = [
          "out"
          "bin"
        ];
        out = drv "nvidia-dc-out";
        bin = drv "nvidia-dc-bin";
      };
  };
  image =
    args:
    import ../../images/gpu-runner (
      {
        inherit pkgs flywheelLib;
        flywheel = drv "flywheel";
        canary = drv "flywheel-canary";
      }
      // args
    );
  lane = image {
    cacheUrl = "http://cache.honey:5480/main";
    cachePublicKey = "main-1:2cSmR83zxYFSezcjotnCrqTm5qTbIO3Itzv7kLAGNfU=";
    sourceRevision = "0123456789abcdef";
  };
  spec = lane.imageSpec;
  plain = (image { }).imageSpec;
  throws = e: !(builtins.tryEval (builtins.deepSeq e e)).success;
  nixConf = builtins.concatStringsSep "\n" (
    map (e: e.text or "") (lane.runnerTree.flywheelTree or [ ])
  );
  cases = {
    userIsTheRunner = spec.config.User == "1001:1001";
    entrypointIsRunSh = spec.config.Entrypoint == [ "/home/runner/run.sh" ];
    driverAndRunnerLayers = map (l: l.name) spec.layers == [
      "nvidia-driver"
      "runner"
    ];
    driverPinned = spec.tag == "580.159.04";
    labels =
      spec.config.Labels."org.opencontainers.image.revision" == "0123456789abcdef"
      && spec.config.Labels."dev.flywheel.runner.version" == "2.330.0";
    nixUsableAsTheRunner = spec.nixStore == {
      owner = {
        uid = 1001;
        gid = 1001;
      };
      registration = true;
    };
    cacheInEnv = builtins.elem "FLYWHEEL_CACHE_URL=http://cache.honey:5480/main" spec.config.Env;
    cacheInNixConf =
      builtins.match ".*extra-substituters = http://cache.honey:5480/main.*" nixConf != null
      && builtins.match ".*extra-trusted-public-keys = main-1:.*" nixConf != null;
    noCacheWithoutOne = !(builtins.any (e: builtins.match "FLYWHEEL_CACHE_URL=.*" e != null) plain.config.Env);
    canaryOnPath = builtins.any (p: builtins.match ".*flywheel-canary" p != null) spec.closureRoots;
    unknownDriverVersionThrows = throws (image { driverVersion = "1.2.3"; }).imageSpec;
    urlWithoutKeyThrows = throws (image { cacheUrl = "http://cache.honey:5480/main"; }).imageSpec;
    # The pin's runner (2.330.0 here) is not runner.json's release: its date is not claimed.
    toolsOnPath =
      let
        path = builtins.head (builtins.filter (e: builtins.substring 0 5 e == "PATH=") spec.config.Env);
        dirs = builtins.filter builtins.isString (builtins.split ":" (builtins.substring 5 (-1) path));
      in
      builtins.all (n: builtins.elem "${pkgs.${n}}/bin" dirs) tools;
    fhsLoaderIsNixLd =
      builtins.any (
        e: e.path == "/lib64/ld-linux-x86-64.so.2" && e.symlink == "${pkgs.nix-ld}/libexec/nix-ld"
      ) lane.runnerTree.flywheelTree
      && builtins.elem pkgs.nix-ld.outPath spec.closureRoots;
    nixLdFindsItsLibrariesInTheImage =
      let
        libPath = builtins.head (builtins.filter (e: builtins.substring 0 20 e == "NIX_LD_LIBRARY_PATH=") spec.config.Env);
        dirs = builtins.filter builtins.isString (builtins.split ":" (builtins.substring 20 (-1) libPath));
        wanted = map (n: "${pkgs.${n}}/lib") fhsLibs ++ [ "${pkgs.openssl.lib}/lib" "${pkgs.stdenv.cc.cc}/lib" ];
      in
      builtins.all (d: builtins.elem d dirs) wanted
      && builtins.all (n: builtins.elem pkgs.${n}.outPath spec.closureRoots) fhsLibs
      && builtins.elem pkgs.openssl.lib.outPath spec.closureRoots
      && builtins.elem "NIX_LD=${glibc}/lib/ld-linux-x86-64.so.2" spec.config.Env
      && builtins.elem glibc.outPath spec.closureRoots;
    usrBinEnvFromCoreutils = builtins.any (
      e: e.path == "/usr/bin/env" && e.symlink == "${pkgs.coreutils}/bin/env"
    ) lane.runnerTree.flywheelTree;
    runnerVersionInEnv = builtins.elem "FLYWHEEL_RUNNER_VERSION=2.330.0" spec.config.Env;
    noReleaseDateForAnotherRelease =
      !(spec.config.Labels ? "dev.flywheel.runner.released")
      && !(builtins.any (e: builtins.match "FLYWHEEL_RUNNER_RELEASED=.*" e != null) spec.config.Env);
    # ARC's container hooks, the release runner.json records, at /home/runner/k8s and labelled.
    containerHooksFromRunnerJson =
      let
        recorded = (builtins.fromJSON (builtins.readFile ../../images/gpu-runner/runner.json)).containerHooks;
        link = builtins.head (builtins.filter (e: e.path == "/home/runner/k8s") lane.runnerTree.flywheelTree);
        hooks = builtins.filter (p: builtins.match ".*-runner-container-hooks-k8s-.*" p != null) spec.closureRoots;
      in
      spec.config.Labels."dev.flywheel.runner.container-hooks" == recorded.version
      && hooks == [ link.symlink ]
      && builtins.match "https://github[.]com/actions/runner-container-hooks/releases/download/v${recorded.version}/actions-runner-hooks-k8s-${recorded.version}[.]zip" recorded.url != null
      && builtins.match "[0-9a-f]{64}" recorded.sha256 != null;
    # runner.json's release: its date in the labels and the environment.
    releaseDateOfTheRecordedRelease =
      let
        recorded = builtins.fromJSON (builtins.readFile ../../images/gpu-runner/runner.json);
        s =
          (import ../../images/gpu-runner {
            pkgs = pkgs // {
              github-runner = drv "github-runner" // {
                inherit (recorded) version;
              };
            };
            inherit flywheelLib;
            flywheel = drv "flywheel";
            canary = drv "flywheel-canary";
          }).imageSpec;
      in
      s.config.Labels."dev.flywheel.runner.version" == recorded.version
      && s.config.Labels."dev.flywheel.runner.released" == recorded.released
      && builtins.elem "FLYWHEEL_RUNNER_RELEASED=${recorded.released}" s.config.Env
      && builtins.match "[0-9]{4}-[0-9]{2}-[0-9]{2}" recorded.released != null;
  };
  failed = builtins.filter (n: !cases.${n}) (builtins.attrNames cases);
in
if failed == [ ] then
  "nix/tests/gpu-runner-image.nix: all ${toString (builtins.length (builtins.attrNames cases))} cases passed"
else
  throw "nix/tests/gpu-runner-image.nix: failed: ${builtins.concatStringsSep ", " failed}"
