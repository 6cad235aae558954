# Fixture derivations shared by tests/image-flake and tests/runner-flake (the tests and
# ./quickstart copy this file beside their flake.nix). Built with Debian's Nix, sandbox off.
{
  system,
  templateLibrary,
  tag,
}:
{
  # A derivation built by /bin/sh running `script` (with /usr/bin and /bin on PATH), with `env`
  # as extra attributes; fixtureTag makes every test run's paths its own.
  sh =
    name: script: env:
    derivation (
      {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-e"
          "-c"
          script
        ];
        PATH = "/usr/bin:/bin";
        fixtureTag = tag;
      }
      // env
    );

  # Debian's loader and the libraries the given host programs load, copied into one store path
  # with each library's RUNPATH set to $ORIGIN: the stand-in for nixpkgs' glibc (and libgcc,
  # libtinfo). Programs copied from the host are patched to it with `selfContained`, so an image
  # holds everything its programs load, as it would with nixpkgs' builds.
  hostLibs =
    programs:
    derivation {
      name = "debian-libs";
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      fixtureTag = tag;
      inherit programs;
      args = [
        "-e"
        "-c"
        ''
          mkdir -p "$out/lib"
          for p in $programs; do
            ldd "$p" | while read -r first arrow path rest; do
              case "$first" in
                /*) cp -L "$first" "$out/lib/$(basename "$first")" ;;
              esac
              case "$path" in
                /*) cp -L "$path" "$out/lib/$first" ;;
              esac
            done
          done
          chmod u+w "$out"/lib/*
          for l in "$out"/lib/*; do
            case "$l" in
              */ld-linux*) ;;
              *)
                patchelf --set-rpath '$ORIGIN' "$l"
                # libc.so.6 is a program too: its interpreter, as in nixpkgs' glibc, beside it.
                if interp=$(patchelf --print-interpreter "$l" 2>/dev/null); then
                  patchelf --set-interpreter "$out/lib/$(basename "$interp")" "$l"
                fi
                ;;
            esac
          done
        ''
      ];
    };

  # A host program copied to $out/bin/NAME, its interpreter and RUNPATH set to `libs`.
  selfContained =
    name: program: libs:
    let
      loader = if system == "aarch64-linux" then "ld-linux-aarch64.so.1" else "ld-linux-x86-64.so.2";
    in
    derivation {
      inherit name system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      fixtureTag = tag;
      args = [
        "-e"
        "-c"
        ''
          mkdir -p "$out/bin"
          cp -L ${program} "$out/bin/${baseNameOf (toString program)}"
          chmod u+w "$out/bin/${baseNameOf (toString program)}"
          patchelf --set-interpreter ${libs}/lib/${loader} --set-rpath ${libs}/lib "$out/bin/${baseNameOf (toString program)}"
        ''
      ];
    };

  # A stand-in for nixpkgs' NVIDIA driver package (580.159.04), with its `out` and `bin`
  # outputs: this machine's libz (`templateLibrary`) dressed up as the driver's libraries by
  # Debian's patchelf.
  fakeDriver = derivation {
    name = "nvidia-x11-580.159.04";
    inherit system;
    builder = "/bin/sh";
    outputs = [
      "out"
      "bin"
    ];
    PATH = "/usr/bin:/bin";
    fixtureTag = tag;
    args = [
      "-e"
      "-c"
      ''
        v=580.159.04
        mkdir -p "$out/lib" "$out/etc/OpenCL/vendors" "$bin/bin"
        for pair in libnvidia-ml:libnvidia-ml.so.1 libcuda:libcuda.so.1 libnvidia-ptxjitcompiler:libnvidia-ptxjitcompiler.so.1 libnvidia-opencl:libnvidia-opencl.so.1; do
          lib=''${pair%%:*}; soname=''${pair#*:}
          cp -L ${templateLibrary} "$out/lib/$lib.so.$v"
          chmod u+w "$out/lib/$lib.so.$v"
          patchelf --set-soname "$soname" "$out/lib/$lib.so.$v"
          ln -s "$lib.so.$v" "$out/lib/$soname"
        done
        echo libnvidia-opencl.so.1 > "$out/etc/OpenCL/vendors/nvidia.icd"
        printf '#!/bin/sh\necho nvidia-smi %s %s\n' "$v" "$fixtureTag" > "$bin/bin/nvidia-smi"
        chmod 0755 "$bin/bin/nvidia-smi"
      ''
    ];
  };
}
