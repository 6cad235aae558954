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

  # Map a Nix system ("x86_64-linux") to the OCI architecture ("amd64").
  ociArchitecture =
    system:
    ociArchitectures.${system}
      or (fail "ociArchitecture" "unsupported system \"${toString system}\"; supported: ${showList (attrNames ociArchitectures)}");

  /*
    Describe an OCI image as plain data. `builtins.toJSON (mkImageSpec { ... })`
    is the document `flywheel image` reads; every argument is validated here so
    that mistakes fail at evaluation time with a message naming the argument.

    Arguments:
      name          image repository name, e.g. "flywheel/gpu-runner"
      closureRoots  derivations or store paths whose closures the image contains
      layers        list of { name; paths ? [ ]; } (paths: derivations or store paths);
                    paths not placed in a layer go into layers the tool computes
      config        OCI image config fields (Env, Cmd, Entrypoint, User, ...)
      architecture  OCI architecture: "amd64" or "arm64" (see ociArchitecture)
      os            "linux" only
      created       RFC 3339 UTC timestamp; the epoch by default, for reproducibility
  */
  mkImageSpec =
    {
      # Defaulted to null only so that a missing name throws a catchable, clear error.
      name ? null,
      closureRoots ? [ ],
      layers ? [ ],
      config ? { },
      architecture ? "amd64",
      os ? "linux",
      created ? "1970-01-01T00:00:00Z",
      # Unknown arguments are reported by the check below (with `throw`, which
      # builtins.tryEval can catch) rather than by Nix's own argument error.
      ...
    }@args:
    let
      fn = "mkImageSpec";

      knownArgs = [
        "name"
        "closureRoots"
        "layers"
        "config"
        "architecture"
        "os"
        "created"
      ];
      unknownArgs = filter (k: !(builtins.elem k knownArgs)) (attrNames args);

      layerNames = map (l: l.name) layers;
      duplicateLayerNames = unique (filter (n: length (filter (m: m == n) layerNames) > 1) layerNames);
      unknownConfigKeys = filter (k: !(builtins.elem k ociConfigKeys)) (attrNames config);

      checkLayer =
        i: layer:
        let
          what = "layers[${toString i}]";
        in
        check (isAttrs layer) fn "${what} must be an attribute set { name; paths ? [ ]; }, got a ${typeOf layer}"
        && check (all (k: k == "name" || k == "paths") (attrNames layer)) fn
          "${what} has unknown attributes; allowed: \"name\", \"paths\""
        && check (layer ? name && isString layer.name && layer.name != "") fn
          "${what}.name must be a non-empty string"
        && check (isList (layer.paths or [ ])) fn "${what}.paths must be a list, got a ${typeOf layer.paths}";

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
        && check (isAttrs config) fn "config must be an attribute set, got a ${typeOf config}"
        && check (unknownConfigKeys == [ ]) fn
          "config has unknown OCI config fields ${showList unknownConfigKeys}; allowed: ${showList ociConfigKeys}"
        && check (builtins.elem architecture supportedArchitectures) fn
          "unknown architecture \"${toString architecture}\"; supported: ${showList supportedArchitectures}"
        && check (os == "linux") fn "unsupported os \"${toString os}\"; only \"linux\" is supported"
        && check (isString created && match createdRegex created != null) fn
          "created must be an RFC 3339 UTC timestamp such as \"1970-01-01T00:00:00Z\", got ${
            if isString created then "\"${created}\"" else "a ${typeOf created}"
          }";

      spec = {
        # Version of this document's layout, so the Rust reader can refuse ones it does not know.
        flywheelImageSpec = 1;
        inherit
          name
          architecture
          os
          created
          config
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
          {
            inherit (layer) name;
            paths = genList (
              j: storePathOf fn "layers[${toString i}].paths[${toString j}]" (builtins.elemAt paths j)
            ) (length paths);
          }
        ) (length layers);
      };
    in
    # Force every store-path conversion too, so a bad root throws here, not later
    # when the Rust side happens to read that field. (Only the path lists: config
    # values may hold large attribute sets that need not be walked.)
    if valid then builtins.deepSeq [ spec.closureRoots spec.layers ] spec else throw "unreachable";
in
{
  inherit mkImageSpec ociArchitecture;
}
