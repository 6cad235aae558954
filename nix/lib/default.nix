# flywheel's image pipeline library: Nix builtins only.
#
# Rule: nothing in nix/lib may import nixpkgs or take `pkgs`/`lib` as an argument.
# Why: the test suite must run offline with Debian's Nix 2.8
# (`nix-instantiate --eval --strict nix/tests/lib.nix`), and nothing on the CI
# machines can fetch or evaluate nixpkgs. Keeping this layer builtins-only also
# means the flake can expose it as a system-independent `lib` output.
# See nix/lib/README.md.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    filter
    genList
    isAttrs
    isList
    isPath
    isString
    length
    match
    storeDir
    substring
    stringLength
    throw
    typeOf
    ;

  fail = fn: msg: throw "flywheel.lib.${fn}: ${msg}";

  # OCI image config fields (OCI image-spec, config.md, "config" object).
  # Checked so that a typo such as `env` instead of `Env` fails at eval time
  # rather than producing an image that silently lacks the setting.
  ociConfigKeys = [
    "User"
    "ExposedPorts"
    "Env"
    "Entrypoint"
    "Cmd"
    "Volumes"
    "WorkingDir"
    "Labels"
    "StopSignal"
  ];

  # OCI `architecture` values (Go's GOARCH) for the Nix systems flywheel builds.
  ociArchitectures = {
    "x86_64-linux" = "amd64";
    "aarch64-linux" = "arm64";
  };

  supportedArchitectures = builtins.attrValues ociArchitectures;

  # OCI `created`: RFC 3339, restricted here to UTC ("Z") so specs compare byte for byte.
  createdRegex = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z";

  # Tags as in the OCI distribution spec.
  tagRegex = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";

  # Image names: lowercase repository path as in the OCI distribution spec (no tag, no registry port).
  nameRegex = "[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*";

  showList = xs: concatStringsSep ", " (map (x: "\"${x}\"") xs);

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];

  # A closure root is a derivation (anything with type = "derivation", which
  # includes the result of builtins.derivation) or a store path string.
  # It is normalised to its store path string; the string keeps its context, so
  # a derivation that later writes the spec with builtins.toJSON depends on it.
  storePathOf =
    fn: what: root:
    if isAttrs root && (root.type or null) == "derivation" then
      root.outPath
    else if isString root && hasPrefix "${storeDir}/" root then
      root
    else if isPath root then
      fail fn "${what}: got the path ${toString root}, which is not in the Nix store; pass a derivation or a store path string instead"
    else if isString root then
      fail fn "${what}: \"${root}\" is not a store path (expected a string under ${storeDir}/ or a derivation)"
    else
      fail fn "${what}: expected a derivation or a store path string, got a ${typeOf root}";

  # Returns true or throws: used in `all` so every check is forced eagerly.
  check = cond: fn: msg: if cond then true else fail fn msg;

  isDerivation = x: isAttrs x && (x.type or null) == "derivation";

  # The builder: the flake's flywheel package, or the path of a flywheel executable.
  flywheelExecutable =
    fn: flywheel:
    if isDerivation flywheel then
      "${flywheel}/bin/flywheel"
    else if isString flywheel || isPath flywheel then
      flywheel
    else
      fail fn "flywheel must be the flywheel package or the path of its executable";

  # Map a Nix system ("x86_64-linux") to the OCI architecture ("amd64").
  ociArchitecture =
    system:
    ociArchitectures.${system}
      or (fail "ociArchitecture" "unsupported system \"${toString system}\"; supported: ${showList (attrNames ociArchitectures)}");

  /*
    Describe an OCI image as plain data. `builtins.toJSON (mkImageSpec { ... })`
    is the document `flywheel image build --spec` reads (docs/image-spec.md);
    every argument is validated here so that mistakes fail at evaluation time
    with a message naming the argument.

    Arguments:
      name            image repository name, e.g. "flywheel/gpu-runner"
      tag             tag written into the layout's index.json ("latest")
      closureRoots    derivations or store paths whose closures the image contains
      layers          pinned layers, each either
                        { name; paths; }   exactly these store paths (derivations or
                                           store paths), in a layer of their own
                        { name; source; prefix ? "/"; overrides ? [ ]; }
                                           a directory tree (a derivation, store path
                                           or path inside one) placed at prefix;
                                           overrides: [ { path; mode ? "1777";
                                           uid ? 0; gid ? 0; recursive ? false; } ]
                        { name; driver; }  an NVIDIA driver tree from mkDriverLayer,
                                           placed at / and recorded in the image's
                                           labels (at most one per image)
                      paths not pinned go into layers the tool computes
      config          OCI image config fields (Env, Cmd, Entrypoint, User, ...)
      annotations     annotations of the image manifest
      architecture    OCI architecture: "amd64" or "arm64" (see ociArchitecture)
      os              "linux" only
      created         RFC 3339 UTC timestamp; by default the source date epoch
      sourceDateEpoch mtime of every file in the layers (default 1)
      maxLayers       most layers, pinned ones included (default 100)
      layering        "cost" (default), "auto" or "popularity"
      compression     "zstd" (default), "zstd:N", "gzip", "gzip:N" or "none"
      nixStore        null (default) or { owner ? { uid; gid; }; registration ? false; }:
                      owner owns every entry of the store-path layers (and /nix,
                      /nix/store); registration adds the layer "nix-db" with
                      /nix/var/nix/{db,gcroots,profiles,temproots} and
                      /nix/.flywheel-registration (every store path of the image
                      for `nix-store --load-db`)
  */
  mkImageSpec =
    {
      # Defaulted to null only so that a missing name throws a catchable, clear error.
      name ? null,
      tag ? "latest",
      closureRoots ? [ ],
      layers ? [ ],
      config ? { },
      annotations ? { },
      architecture ? "amd64",
      os ? "linux",
      created ? null,
      sourceDateEpoch ? null,
      maxLayers ? null,
      layering ? null,
      compression ? null,
      nixStore ? null,
      # Unknown arguments are reported by the check below (with `throw`, which
      # builtins.tryEval can catch) rather than by Nix's own argument error.
      ...
    }@args:
    let
      fn = "mkImageSpec";

      knownArgs = [
        "name"
        "tag"
        "closureRoots"
        "layers"
        "config"
        "annotations"
        "architecture"
        "os"
        "created"
        "sourceDateEpoch"
        "maxLayers"
        "layering"
        "compression"
        "nixStore"
      ];
      unknownArgs = filter (k: !(builtins.elem k knownArgs)) (attrNames args);

      isId = x: builtins.isInt x && x >= 0 && x <= 4294967295;
      checkNixStore =
        check (isAttrs nixStore && all (k: builtins.elem k [ "owner" "registration" ]) (attrNames nixStore)) fn
          "nixStore must be an attribute set { owner ? { uid; gid; }; registration ? false; }"
        && check (!(nixStore ? owner) || (isAttrs nixStore.owner && attrNames nixStore.owner == [ "gid" "uid" ]
          && isId nixStore.owner.uid && isId nixStore.owner.gid)) fn
          "nixStore.owner must be { uid; gid; } with non-negative integers"
        && check (!(nixStore ? registration) || builtins.isBool nixStore.registration) fn
          "nixStore.registration must be true or false";

      layerNames = map (l: l.name) layers;
      duplicateLayerNames = unique (filter (n: length (filter (m: m == n) layerNames) > 1) layerNames);
      unknownConfigKeys = filter (k: !(builtins.elem k ociConfigKeys)) (attrNames config);

      layerKeys = [
        "name"
        "paths"
        "source"
        "prefix"
        "overrides"
        "driver"
      ];
      overrideKeys = [
        "path"
        "mode"
        "uid"
        "gid"
        "recursive"
      ];

      checkOverride =
        what: o:
        check (isAttrs o && all (k: builtins.elem k overrideKeys) (attrNames o)) fn
          "${what} must be an attribute set with ${showList overrideKeys}"
        && check (o ? path && isString o.path && hasPrefix "/" o.path) fn "${what}.path must be an absolute path"
        && check (!(o ? mode) || (isString o.mode && match "[0-7]{3,4}" o.mode != null)) fn
          "${what}.mode must be an octal string such as \"1777\""
        && check (all (k: !(o ? ${k}) || builtins.isInt o.${k}) [
          "uid"
          "gid"
        ]) fn "${what}.uid and .gid must be integers";

      checkLayer =
        i: layer:
        let
          what = "layers[${toString i}]";
          hasPaths = (layer.paths or [ ]) != [ ];
          hasSource = layer ? source;
          hasDriver = layer ? driver;
        in
        check (isAttrs layer) fn "${what} must be an attribute set { name; paths; } or { name; source; prefix ? \"/\"; }, got a ${typeOf layer}"
        && check (all (k: builtins.elem k layerKeys) (attrNames layer)) fn
          "${what} has unknown attributes; allowed: ${showList layerKeys}"
        && check (layer ? name && isString layer.name && layer.name != "") fn
          "${what}.name must be a non-empty string"
        && check (isList (layer.paths or [ ])) fn "${what}.paths must be a list, got a ${typeOf layer.paths}"
        && check (!hasDriver || !(hasPaths || hasSource || layer ? prefix || layer ? overrides)) fn
          "${what}: a driver layer takes only name and driver"
        && check (hasDriver || hasPaths != hasSource) fn
          "${what} needs either paths (store paths) or source (a directory), not both"
        && check (hasSource || !(layer ? prefix || layer ? overrides)) fn
          "${what}: prefix and overrides apply to a source directory only"
        && check (!(layer ? prefix) || (isString layer.prefix && hasPrefix "/" layer.prefix)) fn
          "${what}.prefix must be an absolute path such as \"/\""
        && check (isList (layer.overrides or [ ])) fn "${what}.overrides must be a list"
        && all (x: x) (
          genList (j: checkOverride "${what}.overrides[${toString j}]" (builtins.elemAt layer.overrides j)) (
            length (layer.overrides or [ ])
          )
        );

      valid =
        check (unknownArgs == [ ]) fn "unknown arguments ${showList unknownArgs}; allowed: ${showList knownArgs}"
        && check (name != null) fn "the argument \"name\" is required"
        && check (isString name && match nameRegex name != null) fn
          "name must be a lowercase image name matching ${nameRegex}, got ${
            if isString name then "\"${name}\"" else "a ${typeOf name}"
          }"
        && check (isList closureRoots) fn "closureRoots must be a list, got a ${typeOf closureRoots}"
        && check (isList layers) fn "layers must be a list, got a ${typeOf layers}"
        && all (x: x) (genList (i: checkLayer i (builtins.elemAt layers i)) (length layers))
        && check (duplicateLayerNames == [ ]) fn "layer names must be unique; repeated: ${showList duplicateLayerNames}"
        && check (length (filter (l: isAttrs l && l ? driver) layers) <= 1) fn "at most one driver layer per image"
        && check (isAttrs config) fn "config must be an attribute set, got a ${typeOf config}"
        && check (unknownConfigKeys == [ ]) fn
          "config has unknown OCI config fields ${showList unknownConfigKeys}; allowed: ${showList ociConfigKeys}"
        && check (builtins.elem architecture supportedArchitectures) fn
          "unknown architecture \"${toString architecture}\"; supported: ${showList supportedArchitectures}"
        && check (os == "linux") fn "unsupported os \"${toString os}\"; only \"linux\" is supported"
        && check (created == null || (isString created && match createdRegex created != null)) fn
          "created must be an RFC 3339 UTC timestamp such as \"1970-01-01T00:00:00Z\", got ${
            if isString created then "\"${created}\"" else "a ${typeOf created}"
          }"
        && check (isString tag && match tagRegex tag != null) fn "tag must match ${tagRegex}, got ${toString tag}"
        && check (isAttrs annotations && all (k: isString annotations.${k}) (attrNames annotations)) fn
          "annotations must be an attribute set of strings"
        && check (sourceDateEpoch == null || (builtins.isInt sourceDateEpoch && sourceDateEpoch >= 0)) fn
          "sourceDateEpoch must be a non-negative integer"
        && check (maxLayers == null || (builtins.isInt maxLayers && maxLayers >= 1 && maxLayers <= 125)) fn
          "maxLayers must be an integer in 1..125"
        && check (layering == null || builtins.elem layering [
          "cost"
          "auto"
          "popularity"
        ]) fn "layering must be \"cost\", \"auto\" or \"popularity\""
        && check (compression == null || (isString compression && match "(zstd|gzip)(:[0-9]+)?|none" compression != null)) fn
          "compression must be \"zstd\", \"zstd:N\", \"gzip\", \"gzip:N\" or \"none\""
        && (nixStore == null || checkNixStore)
        && check (!(nixStore.registration or false) || !(builtins.elem "nix-db" layerNames)) fn
          "the layer name \"nix-db\" is taken by the Nix database layer (nixStore.registration)";

      optional = n: v: if v == null then { } else { ${n} = v; };

      spec = {
        # Version of this document's layout, so the Rust reader can refuse ones it does not know.
        flywheelImageSpec = 1;
        inherit
          name
          tag
          architecture
          os
          config
          annotations
          ;
        closureRoots = genList (
          i: storePathOf fn "closureRoots[${toString i}]" (builtins.elemAt closureRoots i)
        ) (length closureRoots);
        layers = genList (
          i:
          let
            layer = builtins.elemAt layers i;
            paths = layer.paths or [ ];
          in
          if layer ? source then
            {
              inherit (layer) name;
              source = storePathOf fn "layers[${toString i}].source" layer.source;
              prefix = layer.prefix or "/";
              overrides = layer.overrides or [ ];
            }
          else if layer ? driver then
            {
              inherit (layer) name;
              driver = storePathOf fn "layers[${toString i}].driver" layer.driver;
            }
          else
            {
              inherit (layer) name;
              paths = genList (
                j: storePathOf fn "layers[${toString i}].paths[${toString j}]" (builtins.elemAt paths j)
              ) (length paths);
            }
        ) (length layers);
      }
      // optional "created" created
      // optional "sourceDateEpoch" sourceDateEpoch
      // optional "maxLayers" maxLayers
      // optional "layering" layering
      // optional "compression" compression
      // optional "nixStore" nixStore;
    in
    # Force every store-path conversion too, so a bad root throws here, not later
    # when the Rust side happens to read that field. (Only the path lists: config
    # values may hold large attribute sets that need not be walked.)
    if valid then builtins.deepSeq [ spec.closureRoots spec.layers ] spec else throw "unreachable";

  /*
    Build an OCI image layout (a directory in the store) with flywheel as the
    builder. Takes every mkImageSpec argument, plus:

      flywheel  the flywheel executable: a derivation with bin/flywheel (the
                flake's packages.flywheel), or a path or string naming the
                binary (the tests pass a cargo-built one)
      system    the Nix system to build on (default builtins.currentSystem,
                which pure flake evaluation must pass explicitly)
      format    "oci" (default), "oci-archive" or "docker-archive"

    The closure is read at build time from exportReferencesGraph with
    __structuredAttrs (NarHash, NarSize and references of every path), so the
    builder needs no access to the Nix database, and the image is exactly the
    one `flywheel image build --spec` writes for the same spec.
  */
  mkImage =
    {
      flywheel ? null,
      system ? builtins.currentSystem,
      format ? "oci",
      ...
    }@args:
    let
      fn = "mkImage";
      specArgs = removeAttrs args [
        "flywheel"
        "system"
        "format"
      ];
      spec = mkImageSpec specArgs;
      builder = flywheelExecutable fn flywheel;
      valid = check (builtins.elem format [
        "oci"
        "oci-archive"
        "docker-archive"
      ]) fn "format must be \"oci\", \"oci-archive\" or \"docker-archive\"";
      exported =
        spec.closureRoots
        ++ builtins.concatLists (map (l: l.paths or [ ]) spec.layers)
        ++ builtins.concatMap (l: if l ? source then [ l.source ] else [ ]) spec.layers
        ++ builtins.concatMap (l: if l ? driver then [ l.driver ] else [ ]) spec.layers;
      drvName = builtins.replaceStrings [ "/" ] [ "-" ] spec.name + "-image";
    in
    assert valid;
    derivation {
      name = drvName;
      inherit system builder;
      args = [
        "image"
        "build"
        "--nix-attrs"
        "--format"
        format
      ];
      __structuredAttrs = true;
      exportReferencesGraph.closureGraph = exported;
      flywheelSpec = spec;
    }
    // {
      imageSpec = spec;
    };

  driverCapabilities = [
    "utility"
    "compute"
    "video"
    "graphics"
    "display"
    "ngx"
  ];

  /*
    The NVIDIA driver userspace as an image layer tree: `flywheel driver collect`
    run as a Nix build (docs/driver.md). Use the result as a `{ name; driver; }`
    layer of mkImage.

      flywheel      as for mkImage
      system        as for mkImage
      driver        nixpkgs' NVIDIA driver package (e.g.
                    linuxPackages.nvidiaPackages.production, or one pinned with
                    mkDriver to the version the nodes run): every output but
                    lib32 is a driver root (out: libraries and ICD files, bin:
                    nvidia-smi, firmware: GSP firmware); or a list of store
                    paths / derivations, such as a host tree added to the store
      version       the driver version the nodes run, e.g. "580.159.04": the
                    build fails if the driver holds another (default: any)
      capabilities  list of utility, compute, video, graphics, display, ngx, or
                    [ "all" ] (default [ "utility" "compute" ])
      arch          "amd64" or "arm64" (default from system)
  */
  mkDriverLayer =
    {
      flywheel ? null,
      system ? builtins.currentSystem,
      driver ? null,
      version ? null,
      capabilities ? [
        "utility"
        "compute"
      ],
      arch ? ociArchitecture system,
      ...
    }@args:
    let
      fn = "mkDriverLayer";
      knownArgs = [
        "flywheel"
        "system"
        "driver"
        "version"
        "capabilities"
        "arch"
      ];
      unknownArgs = filter (k: !(builtins.elem k knownArgs)) (attrNames args);
      builder = flywheelExecutable fn flywheel;
      roots =
        if isDerivation driver then
          map (o: driver.${o}) (filter (o: o != "lib32") (driver.outputs or [ "out" ]))
        else if isList driver then
          driver
        else
          [ driver ];
      rootPaths = genList (i: storePathOf fn "driver[${toString i}]" (builtins.elemAt roots i)) (length roots);
      valid =
        check (unknownArgs == [ ]) fn "unknown arguments ${showList unknownArgs}; allowed: ${showList knownArgs}"
        && check (driver != null && roots != [ ]) fn "driver is required: nixpkgs' NVIDIA driver package or store paths"
        && check (isList capabilities && capabilities != [ ]) fn "capabilities must be a non-empty list"
        && check (all (c: builtins.elem c (driverCapabilities ++ [ "all" ])) capabilities) fn
          "unknown capabilities ${
            showList (filter (c: !(builtins.elem c (driverCapabilities ++ [ "all" ]))) capabilities)
          }; known: ${showList driverCapabilities} or \"all\""
        && check (version == null || (isString version && match "[0-9]+\\.[0-9]+(\\.[0-9]+)?" version != null)) fn
          "version must be a driver version such as \"580.159.04\""
        && check (builtins.elem arch supportedArchitectures) fn
          "unknown arch \"${toString arch}\"; supported: ${showList supportedArchitectures}";
      rootArgs = builtins.concatMap (r: [
        "--driver-root"
        r
      ]) rootPaths;
      layer = derivation {
      name = "nvidia-driver-layer" + (if version == null then "" else "-${version}");
      inherit system builder;
      args = [
        "driver"
        "collect"
        # The build machine's GPU (if any) has nothing to say about the driver packaged here.
        "--no-nvml"
        "--arch"
        arch
        "--capabilities"
        (concatStringsSep "," capabilities)
        "--out"
        (builtins.placeholder "out")
      ]
      ++ (if version == null then [ ] else [ "--expect-version" version ])
      ++ rootArgs;
      };
    in
    assert valid;
    # A bad driver root throws here, at evaluation, not in the build.
    builtins.deepSeq rootPaths (layer // { driverVersion = version; });
  treeEntryKeys = [
    "path"
    "text"
    "symlink"
    "directory"
    "mode"
  ];

  /*
    A small directory tree as a derivation: `flywheel image tree --nix-attrs` run as the
    builder, with the entries as the structured attribute `flywheelTree`. Use it as a
    `{ name; source; }` layer of mkImage.

      flywheel  as for mkImage
      system    as for mkImage
      name      the derivation's name
      entries   [ { path = "/home/runner/run.sh"; text = "..."; mode ? "0644"; }
                  { path = "/bin/sh"; symlink = "/nix/store/...-bash/bin/bash"; }
                  { path = "/home/runner/_work"; directory = true; mode ? "0755"; } ]
                absolute paths; parents are 0755 directories. The Nix store keeps only the
                executable bit of a mode: give other modes and owners as mkImage overrides.
  */
  mkTree =
    {
      flywheel ? null,
      system ? builtins.currentSystem,
      name ? null,
      entries ? null,
      ...
    }@args:
    let
      fn = "mkTree";
      knownArgs = [
        "flywheel"
        "system"
        "name"
        "entries"
      ];
      unknownArgs = filter (k: !(builtins.elem k knownArgs)) (attrNames args);
      builder = flywheelExecutable fn flywheel;
      paths = map (e: e.path) entries;
      duplicates = unique (filter (p: length (filter (q: q == p) paths) > 1) paths);
      checkEntry =
        i: e:
        let
          what = "entries[${toString i}]";
          kinds = length (filter (k: e ? ${k}) [
            "text"
            "symlink"
            "directory"
          ]);
        in
        check (isAttrs e) fn "${what} must be an attribute set { path; text | symlink | directory; mode ? ...; }"
        && check (all (k: builtins.elem k treeEntryKeys) (attrNames e)) fn
          "${what} has unknown attributes; allowed: ${showList treeEntryKeys}"
        && check (e ? path && isString e.path && match "(/[^/]+)+" e.path != null
          && match ".*/\\.\\.?(/.*)?" e.path == null) fn
          "${what}.path must be an absolute path without `.` or `..` components, such as \"/etc/passwd\""
        && check (kinds == 1) fn "${what} (${e.path}) needs exactly one of text, symlink or directory = true"
        && check (!(e ? text) || isString e.text) fn "${what}.text must be a string"
        && check (!(e ? symlink) || (isString e.symlink && e.symlink != "")) fn
          "${what}.symlink must be a non-empty string"
        && check (!(e ? directory) || e.directory == true) fn "${what}.directory must be true"
        && check (!(e ? mode) || (isString e.mode && match "[0-7]{3,4}" e.mode != null)) fn
          "${what}.mode must be an octal string such as \"0755\""
        && check (!(e ? mode && e ? symlink)) fn "${what}: a symlink has no mode";
      valid =
        check (unknownArgs == [ ]) fn "unknown arguments ${showList unknownArgs}; allowed: ${showList knownArgs}"
        && check (isString name && match "[A-Za-z0-9+._?=-][A-Za-z0-9+._?=-]*" name != null) fn
          "name must be a derivation name (letters, digits, + - . _ ? =)"
        && check (isList entries) fn "entries must be a list, got a ${typeOf entries}"
        && all (x: x) (genList (i: checkEntry i (builtins.elemAt entries i)) (length entries))
        && check (duplicates == [ ]) fn "entries name the same path twice: ${showList duplicates}";
    in
    assert valid;
    derivation {
      inherit name system builder;
      args = [
        "image"
        "tree"
        "--nix-attrs"
      ];
      __structuredAttrs = true;
      flywheelTree = entries;
    };

  # The store path a path inside one belongs to ("/nix/store/abc-bash/bin/bash" ->
  # "/nix/store/abc-bash"), keeping the string's context; null for a path outside the store.
  storeRootOf =
    s:
    let
      m = match "(${storeDir}/[^/]+).*" (builtins.unsafeDiscardStringContext (toString s));
    in
    if m == null then null else substring 0 (stringLength (builtins.head m)) (toString s);

  /*
    A GitHub Actions runner image laid out the way actions-runner-controller
    (gha-runner-scale-set) starts it: /home/runner/run.sh, a runner user, job hooks, Nix
    configured for the lane's cache. See nix/lib/README.md.
  */
  mkRunnerImage =
    {
      flywheel ? null,
      system ? builtins.currentSystem,
      name ? "flywheel/gpu-runner",
      tag ? "latest",
      runner ? null,
      shell ? null,
      packages ? [ ],
      driverLayer ? null,
      caBundle ? null,
      envProgram ? null,
      fhsLoader ? null,
      extraClosure ? [ ],
      containerHooks ? null,
      cacheUrl ? null,
      cachePublicKey ? null,
      sourceRevision ? null,
      user ? "runner",
      uid ? 1001,
      gid ? 1001,
      extraEnv ? { },
      labels ? { },
      compression ? null,
      sourceDateEpoch ? null,
      maxLayers ? null,
      layering ? null,
      format ? "oci",
      ...
    }@args:
    let
      fn = "mkRunnerImage";
      knownArgs = [
        "flywheel"
        "system"
        "name"
        "tag"
        "runner"
        "shell"
        "packages"
        "driverLayer"
        "caBundle"
        "envProgram"
        "fhsLoader"
        "extraClosure"
        "containerHooks"
        "cacheUrl"
        "cachePublicKey"
        "sourceRevision"
        "user"
        "uid"
        "gid"
        "extraEnv"
        "labels"
        "compression"
        "sourceDateEpoch"
        "maxLayers"
        "layering"
        "format"
      ];
      unknownArgs = filter (k: !(builtins.elem k knownArgs)) (attrNames args);
      isStorePathString = s: (isString s || isPath s) && storeRootOf s != null;
      # The derivation or store path string form a mkDriverLayer output takes, or a ready layer.
      driverLayerSpec =
        if driverLayer == null then
          null
        else if isAttrs driverLayer && !(isDerivation driverLayer) && driverLayer ? driver then
          { name = driverLayer.name or "nvidia-driver"; inherit (driverLayer) driver; }
        else
          {
            name = "nvidia-driver";
            driver = driverLayer;
          };
      home = "/home/runner";
      # The ELF interpreter path programs built for other distributions carry.
      fhsLoaderPath =
        if system == "aarch64-linux" then "/lib/ld-linux-aarch64.so.1" else "/lib64/ld-linux-x86-64.so.2";
      flywheelExe = flywheelExecutable fn flywheel;
      # The flywheel the hooks run: in the image when it is a store path.
      flywheelRoot = if isDerivation flywheel then flywheel.outPath else storeRootOf flywheelExe;
      valid =
        check (unknownArgs == [ ]) fn "unknown arguments ${showList unknownArgs}; allowed: ${showList knownArgs}"
        && check (flywheel != null) fn "flywheel is required: the flywheel package or the path of its executable"
        && check (isStorePathString runner || isDerivation runner) fn
          "runner must be the path of the runner's listener in the store, such as \"\${pkgs.github-runner}/bin/Runner.Listener\""
        && check (isStorePathString shell || isDerivation shell) fn
          "shell must be the path of bash in the store, such as \"\${pkgs.bash}/bin/bash\""
        && check (isList packages && all (p: isDerivation p || isStorePathString p) packages) fn
          "packages must be a list of derivations or store paths"
        && check (driverLayer == null || isDerivation driverLayer || isStorePathString driverLayer
          || (isAttrs driverLayer && driverLayer ? driver)) fn
          "driverLayer must be mkDriverLayer's output (or a { name; driver; } layer)"
        && check (caBundle == null || isStorePathString caBundle || isDerivation caBundle) fn
          "caBundle must be the path of a CA bundle file in the store"
        && check (isList extraClosure && all (p: isDerivation p || isStorePathString p) extraClosure) fn
          "extraClosure must be a list of derivations or store paths (in the image, not on PATH)"
        && check (fhsLoader == null || isStorePathString fhsLoader) fn
          "fhsLoader must be the path of a loader in the store, such as \"\${pkgs.nix-ld}/libexec/nix-ld\" (linked at ${fhsLoaderPath})"
        && check (containerHooks == null || isDerivation containerHooks || isStorePathString containerHooks) fn
          "containerHooks must be the directory of ARC's container hooks in the store (index.js in it), such as the unpacked actions-runner-hooks-k8s release (linked at /home/runner/k8s)"
        && check (envProgram == null || isStorePathString envProgram) fn
          "envProgram must be the path of env in the store, such as \"\${pkgs.coreutils}/bin/env\" (linked at /usr/bin/env)"
        && check ((cacheUrl == null) == (cachePublicKey == null)) fn
          "cacheUrl and cachePublicKey go together: give both or neither"
        && check (cacheUrl == null || (isString cacheUrl && match "https?://[^ ]+" cacheUrl != null)) fn
          "cacheUrl must be an http:// or https:// URL"
        && check (cachePublicKey == null || (isString cachePublicKey && match "[^: ]+:[A-Za-z0-9+/=]+" cachePublicKey != null)) fn
          "cachePublicKey must be a Nix public key such as \"cache-1:base64...\""
        && check (sourceRevision == null || (isString sourceRevision && sourceRevision != "")) fn
          "sourceRevision must be a non-empty string"
        && check (isString user && match "[a-z_][a-z0-9_-]*" user != null && user != "root") fn
          "user must be a user name such as \"runner\" (not root)"
        && check (builtins.isInt uid && uid > 0) fn "uid must be a positive integer"
        && check (builtins.isInt gid && gid > 0) fn "gid must be a positive integer"
        && check (isAttrs extraEnv && all (k: isString extraEnv.${k}) (attrNames extraEnv)) fn
          "extraEnv must be an attribute set of strings"
        && check (isAttrs labels && all (k: isString labels.${k}) (attrNames labels)) fn
          "labels must be an attribute set of strings";

      shellPath = toString shell;
      runnerPath = toString runner;
      uidGid = "${toString uid}:${toString gid}";

      # run.sh's word for the image's own CA bundle, read by bash (none without one).
      imageBundleWord = if caPath == null then "" else "\"$(<${caPath})\" ";
      runSh = ''
        #!${shellPath}
        # Started by actions-runner-controller (gha-runner-scale-set) with
        # ACTIONS_RUNNER_INPUT_JITCONFIG set: the listener reads its just-in-time (ephemeral)
        # registration from it, runs one job and exits.
        set -eu
        # The image's store is the runner user's, and /nix/.flywheel-registration lists its
        # paths: register them with Nix on the first start, so `nix build` finds them valid.
        if [ ! -e /nix/var/nix/db/db.sqlite ] && [ -e /nix/.flywheel-registration ]; then
          if command -v nix-store >/dev/null 2>&1; then
            echo "flywheel: registering the image's store paths with Nix (nix-store --load-db)"
            nix-store --load-db < /nix/.flywheel-registration \
              || echo "flywheel: nix-store --load-db failed (exit $?); Nix does not know the image's store paths"
          else
            echo "flywheel: nix-store is not on PATH; not registering the image's store paths"
          fi
        fi
        # The lane's extra CA (runners.extra_ca: a ConfigMap the pod mounts), trusted beside the
        # image's bundle by everything that reads these variables: one bundle of both under
        # $HOME, written whole before it is named. Bash builtins only: the image need not have
        # coreutils on PATH.
        if [ -n "''${FLYWHEEL_EXTRA_CA:-}" ]; then
          extra=""
          if [ -r "$FLYWHEEL_EXTRA_CA" ]; then extra=$(<"$FLYWHEEL_EXTRA_CA"); fi
          case "$extra" in
            *"-----BEGIN CERTIFICATE-----"*) ;;
            *)
              echo "flywheel: FLYWHEEL_EXTRA_CA=$FLYWHEEL_EXTRA_CA is not a readable PEM certificate file: fix the lane's runners.extra_ca (docs/lane.md)" >&2
              exit 1
              ;;
          esac
          bundle="$HOME/.flywheel-ca-bundle.crt"
          printf '%s\n' ${imageBundleWord}"$extra" > "$bundle"
          export SSL_CERT_FILE="$bundle" NIX_SSL_CERT_FILE="$bundle" GIT_SSL_CAINFO="$bundle" \
            CURL_CA_BUNDLE="$bundle" REQUESTS_CA_BUNDLE="$bundle" NODE_EXTRA_CA_CERTS="$FLYWHEEL_EXTRA_CA"
          echo "flywheel: trusting the lane's extra CA ($FLYWHEEL_EXTRA_CA) beside the image's bundle"
        fi
        # The listener's exit codes, as actions/runner's run.sh and run-helper.sh treat them,
        # so ARC sees what the actions-runner image gives it: 0 when the listener is done (its
        # job ran, it was told to stop, another session took over), and the listener started
        # again after a retryable error. An update request fails instead: an image's runner
        # cannot update itself. TERM and INT go on to the listener as TERM (a background job of a
        # non-interactive shell ignores INT), and it ends its job cleanly.
        listener=""
        trap '[ -z "$listener" ] || kill -TERM "$listener" 2>/dev/null' TERM INT
        while :; do
          ${runnerPath} run "$@" &
          listener=$!
          code=0
          wait "$listener" || code=$?
          # A signal ends `wait` early: wait again for the listener's own exit code.
          while kill -0 "$listener" 2>/dev/null; do
            code=0
            wait "$listener" || code=$?
          done
          case "$code" in
            0) exit 0 ;;
            1) echo "flywheel: the runner's listener stopped (exit 1, terminated): no retry"; exit 0 ;;
            2)
              echo "flywheel: the runner's listener hit a retryable error (exit 2): starting it again in 5 s"
              read -r -t 5 <> <(:) || true
              ;;
            3 | 4)
              echo "flywheel: the runner's listener asked to update itself (exit $code), which an image's runner cannot: rebuild the image with a newer runner (docs/runner-image.md)" >&2
              exit 1
              ;;
            5) echo "flywheel: the runner's listener lost its session to another (exit 5): no retry"; exit 0 ;;
            7)
              if [ "''${ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE:-}" = 1 ]; then
                echo "flywheel: the runner's version is deprecated (exit 7): rebuild the image with a newer runner (docs/runner-image.md)" >&2
                exit 7
              fi
              ;& # otherwise an unknown code, as below
            *) echo "flywheel: the runner's listener exited with unknown code $code"; exit 0 ;;
          esac
        done
      '';

      # The hooks are `flywheel lane hook` (docs/lane.md): one line each in the job log.
      jobStarted = ''
        #!${shellPath}
        # ACTIONS_RUNNER_HOOK_JOB_STARTED: the image's driver userspace against the node's kernel
        # module (a mismatch refuses the job), the cache's reachability, and the job's start time
        # for the completed hook.
        ${if cacheUrl == null then "" else "export FLYWHEEL_CACHE_URL=\"\${FLYWHEEL_CACHE_URL:-${cacheUrl}}\"\n"}exec ${flywheelExe} lane hook job-started${if driverLayerSpec == null then " --no-driver" else ""}
      '';

      jobCompleted = ''
        #!${shellPath}
        # ACTIONS_RUNNER_HOOK_JOB_COMPLETED: push what the job built to the lane's cache
        # (`flywheel cache push --since` the job's start, the result* links in $GITHUB_WORKSPACE,
        # the paths listed in $FLYWHEEL_PUSH_PATHS), never for pull requests; remove the job's
        # temporary files; check no process of the job holds the GPU. Never fails the job.
        ${if cacheUrl == null then "" else "export FLYWHEEL_CACHE_URL=\"\${FLYWHEEL_CACHE_URL:-${cacheUrl}}\"\n"}${flywheelExe} lane hook job-completed || echo "flywheel: job-completed: the hook failed (exit $?); the job's result stands"
        exit 0
      '';

      # The lane pod's init container runs this with --to /nix-volume: the image's /nix copied
      # into the runner's /nix volume, which would otherwise hide it (docs/lane.md).
      seedNix = ''
        #!${shellPath}
        exec ${flywheelExe} lane seed-nix "$@"
      '';

      nixConf = concatStringsSep "\n" (
        [
          "# Written by flywheel's mkRunnerImage: single-user Nix as the runner user."
          "experimental-features = nix-command flakes"
          "build-users-group ="
          "sandbox = false"
        ]
        ++ (if cacheUrl == null then [ ] else [ "extra-substituters = ${cacheUrl}" ])
        ++ (if cachePublicKey == null then [ ] else [ "extra-trusted-public-keys = ${cachePublicKey}" ])
      ) + "\n";

      entries = [
        { path = "/etc/passwd"; text = "root:x:0:0:root:/root:${shellPath}\n${user}:x:${uidGid}:${user}:${home}:${shellPath}\n"; }
        { path = "/etc/group"; text = "root:x:0:\n${user}:x:${toString gid}:\n"; }
        { path = "/etc/nix/nix.conf"; text = nixConf; }
        { path = "/bin/sh"; symlink = shellPath; }
        { path = "/bin/bash"; symlink = shellPath; }
        { path = "/tmp"; directory = true; }
        { path = "/root"; directory = true; mode = "0700"; }
        { path = "${home}/run.sh"; text = runSh; mode = "0755"; }
        { path = "${home}/_work"; directory = true; }
        { path = "${home}/hooks/job-started.sh"; text = jobStarted; mode = "0755"; }
        { path = "${home}/hooks/job-completed.sh"; text = jobCompleted; mode = "0755"; }
        { path = "${home}/hooks/seed-nix.sh"; text = seedNix; mode = "0755"; }
      ]
      # ARC's kubernetes mode runs ACTIONS_RUNNER_CONTAINER_HOOKS=/home/runner/k8s/index.js,
      # where the actions-runner image keeps them.
      ++ (if containerHooks == null then [ ] else [ { path = "${home}/k8s"; symlink = toString containerHooks; } ])
      # `#!/usr/bin/env bash` is how most job scripts start.
      ++ (if envProgram == null then [ ] else [ { path = "/usr/bin/env"; symlink = toString envProgram; } ])
      # Where binaries built elsewhere (what setup-* actions download) ask for their loader.
      ++ (if fhsLoader == null then [ ] else [ { path = fhsLoaderPath; symlink = toString fhsLoader; } ])
      # Where programs built for Debian/Ubuntu (ca-certificates) and Fedora/RHEL look for the
      # CA bundle when SSL_CERT_FILE is not read: tools the setup-* actions download.
      ++ (
        if caBundle == null then
          [ ]
        else
          [
            { path = "/etc/ssl/certs/ca-certificates.crt"; symlink = toString caBundle; }
            { path = "/etc/pki/tls/certs/ca-bundle.crt"; symlink = toString caBundle; }
          ]
      );

      tree = mkTree {
        inherit flywheel system entries;
        name = "runner-tree";
      };

      caPath = if caBundle == null then null else toString caBundle;
      env =
        [
          "PATH=${concatStringsSep ":" (map (p: "${p}/bin") packages)}"
          "HOME=${home}"
          "USER=${user}"
          # The runner's own files (.runner, .credentials, _diag) and its work directory under
          # the home ARC mounts /home/runner/_work into; its log on stdout, for kubectl logs.
          "RUNNER_ROOT=${home}"
          "ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1"
          # glibc's built-in UTF-8 locale (2.35 and later): no locale archive needed.
          "LANG=C.UTF-8"
          "ACTIONS_RUNNER_HOOK_JOB_STARTED=${home}/hooks/job-started.sh"
          "ACTIONS_RUNNER_HOOK_JOB_COMPLETED=${home}/hooks/job-completed.sh"
        ]
        ++ (
          if caPath == null then
            [ ]
          else
            [
              "SSL_CERT_FILE=${caPath}"
              "NIX_SSL_CERT_FILE=${caPath}"
              "GIT_SSL_CAINFO=${caPath}"
            ]
        )
        ++ (if cacheUrl == null then [ ] else [ "FLYWHEEL_CACHE_URL=${cacheUrl}" ])
        ++ map (k: "${k}=${extraEnv.${k}}") (attrNames extraEnv);

      rootOf = x: if isDerivation x then x.outPath else storeRootOf x;
      closureRoots = unique (
        map rootOf packages
        ++ [
          (rootOf runner)
          (rootOf shell)
        ]
        ++ (if flywheelRoot == null then [ ] else [ flywheelRoot ])
        ++ (if caBundle == null then [ ] else [ (rootOf caBundle) ])
        ++ (if envProgram == null then [ ] else [ (rootOf envProgram) ])
        ++ (if fhsLoader == null then [ ] else [ (rootOf fhsLoader) ])
        ++ (if containerHooks == null then [ ] else [ (rootOf containerHooks) ])
        ++ map rootOf extraClosure
      );

      image = mkImage (
        {
          inherit flywheel system name tag format closureRoots;
          # Single-user Nix as the runner user: the store is theirs, and Nix learns its paths
          # from the registration on the first start (run.sh).
          nixStore = {
            owner = { inherit uid gid; };
            registration = true;
          };
          layers =
            (if driverLayerSpec == null then [ ] else [ driverLayerSpec ])
            ++ [
              {
                name = "runner";
                source = tree;
                prefix = "/";
                overrides = [
                  {
                    path = "/tmp";
                    mode = "1777";
                  }
                  {
                    path = "/root";
                    mode = "0700";
                  }
                  # The store keeps only 0555/0444: the runner writes its home (_work, its
                  # registration), and everything there is a directory or a script.
                  {
                    path = home;
                    mode = "0755";
                    inherit uid gid;
                    recursive = true;
                  }
                ];
              }
            ];
          config = {
            User = uidGid;
            WorkingDir = home;
            Env = env;
            Entrypoint = [ "${home}/run.sh" ];
            Labels =
              (if sourceRevision == null then { } else { "org.opencontainers.image.revision" = sourceRevision; })
              // { "dev.flywheel.runner.user" = user; }
              # `flywheel lane check` looks for it when a lane runs in kubernetes mode.
              // (
                if containerHooks == null then
                  { }
                else
                  { "dev.flywheel.runner.container-hooks" = containerHooks.version or "unversioned"; }
              )
              // labels;
          };
        }
        // (if compression == null then { } else { inherit compression; })
        // (if sourceDateEpoch == null then { } else { inherit sourceDateEpoch; })
        // (if maxLayers == null then { } else { inherit maxLayers; })
        // (if layering == null then { } else { inherit layering; })
      );
    in
    assert valid;
    image // { runnerTree = tree; };
in
{
  inherit
    mkImageSpec
    mkImage
    mkDriverLayer
    mkTree
    mkRunnerImage
    ociArchitecture
    ;
}
