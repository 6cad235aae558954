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
