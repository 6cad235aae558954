# Fixture derivations shared by tests/image-flake and tests/runner-flake (the tests and
# ./quickstart copy this file beside their flake.nix). Built with Debian's Nix, sandbox off.
{
  system,
  templateLibrary,
  tag,
}:
rec {
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
          # What glibc's own lib folder holds besides: libraries that dlopen'd ones (the NVIDIA
          # driver's) link, found by nixpkgs' loader in that folder.
          libdir=$(dirname "$(readlink -f "$(ldd /bin/sh | awk '/libc[.]so[.]6/ {print $3}')")")
          for l in libdl.so.2 libpthread.so.0 librt.so.1 libm.so.6; do
            cp -L "$libdir/$l" "$out/lib/$l"
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

  # Host programs copied to $out/bin (each under its own name, `aliases` as "LINK=TARGET"
  # symlinks, LINK relative to $out/bin), their interpreter and RPATH set to `libs` (DT_RPATH: see `selfContained`): a stand-in for a
  # nixpkgs package of several programs (coreutils, nix with nix-build and nix-store).
  hostTools =
    name: programs: aliases: libs:
    let
      loader = if system == "aarch64-linux" then "ld-linux-aarch64.so.1" else "ld-linux-x86-64.so.2";
    in
    derivation {
      inherit name system programs aliases;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      fixtureTag = tag;
      args = [
        "-e"
        "-c"
        ''
          mkdir -p "$out/bin"
          for p in $programs; do
            b="$out/bin/$(basename "$p")"
            cp -L "$p" "$b"
            chmod u+w "$b"
            patchelf --set-interpreter ${libs}/lib/${loader} --force-rpath --set-rpath ${libs}/lib "$b"
          done
          for a in $aliases; do
            mkdir -p "$(dirname "$out/bin/''${a%%=*}")"
            ln -s "''${a#*=}" "$out/bin/''${a%%=*}"
          done
        ''
      ];
    };

  # A stand-in for nixpkgs' nix-ld, compiled from the C below by the host's gcc: the ELF
  # interpreter programs built for other distributions name, which runs them with the loader
  # NIX_LD names and the libraries of NIX_LD_LIBRARY_PATH. Static and without libc, so it needs
  # nothing outside the image. x86_64-linux only. Stripped: the symbol table would name the
  # source's store path, and so pull the source into the image's closure.
  nixLd = derivation {
    name = "nix-ld-standin";
    inherit system;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    fixtureTag = tag;
    source = builtins.toFile "nix-ld.c" ''
      /* A stand-in for nix-ld (tests/fixtures.nix builds it): the ELF interpreter that programs built
       * for other distributions name (/lib64/ld-linux-x86-64.so.2). Like nix-ld it runs the program
       * with the loader named by NIX_LD and the libraries of NIX_LD_LIBRARY_PATH, and fails with one
       * line when NIX_LD is unset. Built without libc (static-pie, no relocations): as an interpreter
       * it starts before anything is mapped but the program and itself. x86-64 Linux only. */

      static long sys3(long n, long a, long b, long c) {
        long r;
        __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
        return r;
      }

      static long len(const char *s) {
        long n = 0;
        while (s[n]) n++;
        return n;
      }

      /* The value of NAME= in envp, or 0. */
      static char *env(char **envp, const char *name) {
        for (; *envp; envp++) {
          const char *e = *envp, *n = name;
          while (*n && *e == *n) e++, n++;
          if (!*n && *e == '=') return (char *)e + 1;
        }
        return 0;
      }

      static void fail(const char *what) {
        sys3(1, 2, (long)what, len(what));
        sys3(60, 127, 0, 0);
      }

      __attribute__((used)) void start(long *sp) {
        long argc = sp[0];
        char **argv = (char **)(sp + 1), **envp = argv + argc + 1, **e = envp;
        while (*e) e++;
        char *program = 0;
        for (long *aux = (long *)(e + 1); aux[0]; aux += 2)
          if (aux[0] == 31 /* AT_EXECFN */) program = (char *)aux[1];
        char *ld = env(envp, "NIX_LD"), *path = env(envp, "NIX_LD_LIBRARY_PATH");
        if (!ld || !*ld) fail("nix-ld: cannot run a program built for another distribution: NIX_LD is not set\n");
        if (!program) fail("nix-ld: the kernel did not say which program to run (no AT_EXECFN)\n");
        char *args[argc + 8];
        long n = 0;
        args[n++] = ld;
        if (path && *path) {
          args[n++] = "--library-path";
          args[n++] = path;
        }
        args[n++] = "--argv0";
        args[n++] = argc > 0 ? argv[0] : program;
        args[n++] = program;
        for (long i = 1; i < argc; i++) args[n++] = argv[i];
        args[n] = 0;
        sys3(59, (long)ld, (long)args, (long)envp);
        fail("nix-ld: cannot run NIX_LD\n");
      }

      __asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call start\n  hlt\n");
    '';
    args = [
      "-e"
      "-c"
      ''
        mkdir -p "$out/libexec"
        gcc -O2 -s -nostdlib -static-pie -fPIE -ffreestanding -fno-stack-protector -fno-builtin \
          -o "$out/libexec/nix-ld" "$source"
      ''
    ];
  };

  # A host program copied to $out/bin/NAME, its interpreter and RPATH set to `libs`: DT_RPATH,
  # not RUNPATH, because the executable's DT_RPATH also serves the libraries it loads and
  # dlopens, as nixpkgs' loader serves them from glibc's folder (its default path), where
  # Debian's loader would look in /lib and /usr/lib, which the image does not have.
  selfContained = name: program: libs: hostTools name [ program ] [ ] libs;

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
