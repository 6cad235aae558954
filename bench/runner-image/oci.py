#!/usr/bin/env python3
"""The runtime side of bench/runner-image/on-device.sh: one OCI runtime config (the config.json
umoci writes from the image's own config) for runc, and the same config carried out by chroot and
namespaces where runc cannot run.

  oci.py config BASE OUT --hostname H [--env K=V]... [--bind SRC:DST]... [--tmpfs DST]...
                [--fsgroup GID] [--gpu] [--host-network] [-- ARGS...]
      BASE (umoci's config.json) adapted for a runner pod's container: the image's user, env and
      working directory; ARGS replace the image's entrypoint; /tmp a tmpfs; the pod's volumes
      bound; with --gpu every /dev/nvidia* character device as a device of the container and
      allowed in its device cgroup (what the NVIDIA device plugin or CDI gives a container).
  oci.py mounts CONFIG ROOTFS
      prints the bash that a chroot runtime runs inside fresh mount, pid, uts and ipc namespaces
      (unshare) to give ROOTFS the config's mounts and devices; it ends by exec'ing `oci.py exec`.
  oci.py exec CONFIG ROOTFS
      chroot to ROOTFS, the config's cwd, groups, gid, uid and no_new_privs, then exec its args
      with exactly its env (as runc's init does).
"""
import argparse
import ctypes
import json
import os
import shlex
import stat
import sys

HERE = os.path.abspath(__file__)


def gpu_devices():
    """Every NVIDIA character device of the host: (path, major, minor, mode)."""
    found = []
    for d in ("/dev", "/dev/nvidia-caps"):
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if not name.startswith("nvidia"):
                continue
            st = os.stat(path)
            if stat.S_ISCHR(st.st_mode):
                found.append((path, os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode)))
    return found


def config(a):
    c = json.load(open(a.base))
    p = c["process"]
    p["terminal"] = False
    if a.args:
        p["args"] = a.args
    env = list(p.get("env", []))
    for kv in a.env:
        name = kv.split("=", 1)[0]
        env = [e for e in env if e.split("=", 1)[0] != name] + [kv]
    p["env"] = env
    if a.fsgroup is not None:
        p["user"]["additionalGids"] = [a.fsgroup]
    c["hostname"] = a.hostname
    mounts = [m for m in c["mounts"] if m["destination"] != "/tmp"]
    for dst in a.tmpfs:
        mounts.append({"destination": dst, "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777"]})
    for b in a.bind:
        src, dst = b.split(":", 1)
        mounts.append({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "rw"]})
    c["mounts"] = mounts
    linux = c.setdefault("linux", {})
    if a.host_network:
        # The pod reaches the cache server over the network; here that is the host's loopback.
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n["type"] != "network"]
    if a.gpu:
        devices = linux.setdefault("devices", [])
        allow = linux.setdefault("resources", {}).setdefault("devices", [])
        for path, major, minor, mode in gpu_devices():
            devices.append({"path": path, "type": "c", "major": major, "minor": minor,
                            "fileMode": mode, "uid": 0, "gid": 0})
            allow.append({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"})
    json.dump(c, open(a.out, "w"), indent=1)


def mounts(a):
    """The bash a chroot runtime runs in its new namespaces: the config's mounts and devices."""
    c = json.load(open(a.config))
    r = os.path.abspath(a.rootfs)
    q = shlex.quote
    out = ["set -eu", f"hostname {q(c.get('hostname', 'container'))}"]
    for m in c["mounts"]:
        dst = r + m["destination"]
        opts = [o for o in m.get("options", []) if o not in ("rbind", "bind", "rw", "ro", "rprivate")]
        t = m.get("type")
        if t == "bind":
            out.append(f"mkdir -p {q(dst)} && mount --rbind {q(m['source'])} {q(dst)}")
        elif t == "proc":
            out.append(f"mkdir -p {q(dst)} && mount -t proc proc {q(dst)}")
        elif t == "sysfs":
            # A fresh sysfs needs a network namespace of our own; the host's, read-only.
            out.append(f"mkdir -p {q(dst)} && mount --rbind /sys {q(dst)} && "
                       f"{{ mount -o remount,bind,ro {q(dst)} 2>/dev/null || true; }}")
        elif t == "tmpfs":
            o = ",".join(opts) or "mode=755"
            out.append(f"mkdir -p {q(dst)} && mount -t tmpfs -o {q(o)} tmpfs {q(dst)}")
        elif t == "devpts":
            out.append(f"mkdir -p {q(dst)} && {{ mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {q(dst)} || true; }}")
        elif t == "mqueue":
            out.append(f"mkdir -p {q(dst)} && {{ mount -t mqueue mqueue {q(dst)} || true; }}")
        # cgroup: not mounted (the job has no use for it here).
    # The devices runc makes in every container, then the config's (the GPU), bound from the host.
    devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
    devices += [d["path"] for d in c.get("linux", {}).get("devices", [])]
    for d in devices:
        out.append(f"mkdir -p {q(os.path.dirname(r + d))} && touch {q(r + d)} && mount --bind {q(d)} {q(r + d)}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        out.append(f"ln -sfn {target} {q(r + '/dev/' + name)}")
    out.append(f"exec python3 {q(HERE)} exec {q(os.path.abspath(a.config))} {q(r)}")
    print("\n".join(out))


def do_exec(a):
    c = json.load(open(a.config))
    p = c["process"]
    libc = ctypes.CDLL(None, use_errno=True)
    os.chroot(a.rootfs)
    os.chdir(p.get("cwd", "/"))
    u = p["user"]
    os.setgroups(u.get("additionalGids", []))
    os.setresgid(u["gid"], u["gid"], u["gid"])
    os.setresuid(u["uid"], u["uid"], u["uid"])
    if p.get("noNewPrivileges"):
        PR_SET_NO_NEW_PRIVS = 38
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    env = dict(e.split("=", 1) for e in p["env"])
    os.execve(p["args"][0], p["args"], env)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("base")
    c.add_argument("out")
    c.add_argument("--hostname", required=True)
    c.add_argument("--env", action="append", default=[])
    c.add_argument("--bind", action="append", default=[])
    c.add_argument("--tmpfs", action="append", default=[])
    c.add_argument("--fsgroup", type=int)
    c.add_argument("--gpu", action="store_true")
    c.add_argument("--host-network", action="store_true")
    m = sub.add_parser("mounts")
    m.add_argument("config")
    m.add_argument("rootfs")
    e = sub.add_parser("exec")
    e.add_argument("config")
    e.add_argument("rootfs")
    argv = sys.argv[1:]
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    a = ap.parse_args(argv)
    if a.cmd == "config":
        a.args = rest
    {"config": config, "mounts": mounts, "exec": do_exec}[a.cmd](a)


if __name__ == "__main__":
    main()
