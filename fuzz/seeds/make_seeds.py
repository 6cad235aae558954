#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/ (run from anywhere):

    python3 fuzz/seeds/make_seeds.py

Needs Python's `cryptography` (the narinfo seeds are signed with the fixed key
fuzz/fuzz_targets/narinfo.rs verifies with) and the `zstd` command (the zstd upload seeds).
The output is deterministic: running it again rewrites the same bytes (the zstd ones, given
the same zstd). The lane spec seed is a copy of docs/lanes/honey-gpu.toml.
"""

import base64
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STORE = "/nix/store"
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
# fuzz/fuzz_targets/narinfo.rs's SEED_KEY: fuzz-1, seed sha256("flywheel-fuzz-1").
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"flywheel-fuzz-1").digest())


def nix32(b: bytes) -> str:
    n = (len(b) * 8 - 1) // 5 + 1
    out = []
    for k in range(n - 1, -1, -1):
        bit = k * 5
        i, j = bit // 8, bit % 8
        c = b[i] >> j
        if i + 1 < len(b):
            c |= b[i + 1] << (8 - j)
        out.append(NIX32[c & 0x1F])
    return "".join(out)


def compress20(h: bytes) -> bytes:
    out = bytearray(20)
    for i, x in enumerate(h):
        out[i % 20] ^= x
    return bytes(out)


def store_path(name: str) -> str:
    """A made-up store path: the hash part from the name."""
    return f"{STORE}/{nix32(compress20(hashlib.sha256(name.encode()).digest()))}-{name}"


def ca_source_path(name: str, nar_sha256: bytes, refs=()) -> str:
    """The path of a fixed:r:sha256 (`nix-store --add`) store object, as Nix computes it."""
    typ = "source" + "".join(":" + r for r in sorted(refs))
    s = f"{typ}:sha256:{nar_sha256.hex()}:{STORE}:{name}"
    return f"{STORE}/{nix32(compress20(hashlib.sha256(s.encode()).digest()))}-{name}"


def nar_str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b + b"\0" * ((8 - len(b) % 8) % 8)


def nar_node(node) -> bytes:
    kind = node[0]
    out = nar_str(b"(") + nar_str(b"type")
    if kind == "file":
        _, data, exe = node
        out += nar_str(b"regular")
        if exe:
            out += nar_str(b"executable") + nar_str(b"")
        out += nar_str(b"contents") + nar_str(data)
    elif kind == "symlink":
        out += nar_str(b"symlink") + nar_str(b"target") + nar_str(node[1])
    else:
        out += nar_str(b"directory")
        for name in sorted(node[1]):
            out += nar_str(b"entry") + nar_str(b"(") + nar_str(b"name") + nar_str(name)
            out += nar_str(b"node") + nar_node(node[1][name]) + nar_str(b")")
    return out + nar_str(b")")


def nar(node) -> bytes:
    return nar_str(b"nix-archive-1") + nar_node(node)


TREE = (
    "dir",
    {
        b"bin": ("dir", {b"hello": ("file", b"#!/bin/sh\necho hello\n", True)}),
        b"share": ("dir", {b"doc": ("file", b"hello, world\n", False), b"empty": ("file", b"", False)}),
        b"lib": ("symlink", b"share"),
    },
)
NAR = nar(TREE)
FILE_NAR = nar(("file", b"hello\n", False))
LINK_NAR = nar(("symlink", b"../a/b"))


def write(target: str, name: str, data) -> None:
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def signature(fingerprint: str) -> str:
    return "fuzz-1:" + base64.b64encode(KEY.sign(fingerprint.encode())).decode()


def narinfo(path, nar_bytes, refs=(), deriver=None, ca=None, extra_sigs=(), compression="zstd", sign=True, extra=()):
    h = hashlib.sha256(nar_bytes).digest()
    refs = sorted(set(refs))
    fp = f"1;{path};sha256:{nix32(h)};{len(nar_bytes)};{','.join(refs)}"
    lines = [
        f"StorePath: {path}",
        f"URL: nar/{nix32(h)}.nar.zst",
        f"Compression: {compression}",
        f"FileHash: sha256:{nix32(hashlib.sha256(b'file').digest())}",
        "FileSize: 123",
        f"NarHash: sha256:{nix32(h)}",
        f"NarSize: {len(nar_bytes)}",
        "References: " + " ".join(r.rsplit("/", 1)[1] for r in refs),
    ]
    if deriver:
        lines.append(f"Deriver: {deriver.rsplit('/', 1)[1]}")
    if sign:
        lines.append(f"Sig: {signature(fp)}")
    lines += [f"Sig: {s}" for s in extra_sigs]
    if ca:
        lines.append(f"CA: {ca}")
    lines += list(extra)
    return "\n".join(lines) + "\n"


def narinfos() -> None:
    hello = store_path("hello-2.12.1")
    glibc = store_path("glibc-2.40-36")
    drv = store_path("hello-2.12.1.drv")
    write("narinfo", "minimal.narinfo", f"StorePath: {hello}\nURL: nar/x.nar\nNarHash: sha256:{nix32(hashlib.sha256(NAR).digest())}\nNarSize: {len(NAR)}\n")
    # Another cache's signature: right length, wrong key.
    other = "cache.nixos.org-1:" + base64.b64encode(hashlib.sha512(b"other").digest()).decode()
    write("narinfo", "signed.narinfo", narinfo(hello, NAR, refs=[glibc, hello], deriver=drv, extra_sigs=[other]))
    refs = [store_path(f"lib{i:02}-1.0") for i in range(40)]
    write("narinfo", "many-references.narinfo", narinfo(store_path("big-env"), NAR, refs=refs + [glibc], deriver=drv))
    h = hashlib.sha256(FILE_NAR).digest()
    ca_path = ca_source_path("greeting", h)
    write("narinfo", "content-addressed.narinfo", narinfo(ca_path, FILE_NAR, ca=f"fixed:r:sha256:{nix32(h)}", compression="xz"))
    text_ca = f"text:sha256:{nix32(hashlib.sha256(b'Derive()').digest())}"
    write("narinfo", "text-ca-unsigned.narinfo", narinfo(drv, LINK_NAR, refs=[glibc], ca=text_ca, sign=False, compression="none"))
    # The other spellings a parser meets: base16 and SRI hashes, unknown-deriver, absolute
    # references, CRLF line ends, an unknown field, an empty Compression.
    hx = hashlib.sha256(NAR).hexdigest()
    sri = "sha256-" + base64.b64encode(hashlib.sha256(NAR).digest()).decode()
    write(
        "narinfo",
        "spellings.narinfo",
        f"StorePath: {hello}\r\nURL: https://cache.example.org/nar/{hx}.nar.xz\r\nCompression:\r\n"
        f"FileHash: {sri}\r\nNarHash: sha256:{hx}\r\nNarSize: {len(NAR)}\r\nReferences: {glibc}\r\n"
        f"Deriver: unknown-deriver\r\nSystem: x86_64-linux\r\n",
    )


def canary_runs() -> None:
    run = {
        "lane": "honey-gpu",
        "run_id": "12345678901-1",
        "runner": "honey-gpu-abc12-runner-x7k2p",
        "started_at": "2026-11-25T09:00:00.5Z",
        "duration_ms": 83_412,
        "status": "pass",
        "image_digest": "sha256:4b1d33b4f3e1c95b3a6d0e3c4e2f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5",
        "driver_version": "580.159.04",
        "kernel_module_version": "580.159.04",
        "version": "0.1.0",
        "url": "https://github.com/tinyland-inc/lane/actions/runs/12345678901",
        "steps": [
            {"name": n, "status": "pass", "required": n != "queue", "duration_ms": d}
            for n, d in [("bootstrap", 1200), ("gpu", 800), ("cuda", 5400), ("vulkan", 2100), ("cache", 2500), ("queue", 30), ("cleanup", 90)]
        ],
        "h2d_bytes_per_second": 25.1e9,
        "d2h_bytes_per_second": 26.3e9,
        "cache_pull_bytes_per_second": 180e6,
        "cache_push_bytes_per_second": 90e6,
        "cache_narinfo_latency_seconds": 0.002,
    }
    write("canary_run", "pass.json", json.dumps(run, indent=1))
    fail = dict(run, status="fail", run_id="12345678902-2", url=None, started_at="2026-11-25T15:17:03Z")
    fail["steps"] = [dict(s) for s in run["steps"]]
    fail["steps"][1].update(
        status="fail",
        reason="GPU 0: 3 uncorrected ECC errors\n<b>remapped rows</b> pending & \"retired\"",
        remedy="drain the node ('kubectl drain') and replace the GPU",
    )
    fail["steps"][5].update(status="skip", reason="no GITHUB_TOKEN")
    write("canary_run", "fail.json", json.dumps(fail, ensure_ascii=False))
    minimal = {k: run[k] for k in ["lane", "run_id", "runner", "started_at", "duration_ms", "status"]}
    minimal["steps"] = []
    minimal["from_a_newer_canary"] = {"x": [1, 2.5e-7, None]}
    write("canary_run", "minimal.json", json.dumps(minimal, separators=(",", ":")))


def routes() -> None:
    h = "0123456789abcdfghijklmnpqrsvwxyz"
    paths = [
        "/healthz",
        "/",
        "/api/v1/status",
        "/api/v1/canary/runs",
        "/metrics",
        "/main",
        "/main/nix-cache-info",
        "/main/api/v1/upstream-keys",
        "/main/api/v1/pins",
        "/main/api/v1/pins/release-24.11",
        "/main/api/v1/missing",
        f"/main/{h}.narinfo",
        f"/gpu_ci-2/{h}.ls",
        f"/main/log/{h}-hello-2.12.1.drv",
        f"/main/nar/{nix32(hashlib.sha256(NAR).digest())}.nar.zst",
        "/main/nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz",
        "/main/nar/../index.sqlite",
        f"/main/log/{h}-a/../b",
        "/Main/x",
    ]
    for i, p in enumerate(paths):
        write("route_names", f"path-{i:02}", p)


def uploads() -> None:
    write("upload_body", "tree.nar", NAR)
    write("upload_body", "tree.nar.xz", lzma.compress(NAR, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64))
    zst = subprocess.run(["zstd", "-q", "-c", "-19", "--no-progress"], input=NAR, capture_output=True, check=True).stdout
    write("upload_body", "tree.nar.zst", zst)
    # Two zstd frames: one stream, as a multi-threaded zstd writes it.
    half = len(NAR) // 2
    frames = b"".join(
        subprocess.run(["zstd", "-q", "-c", "--no-progress"], input=part, capture_output=True, check=True).stdout
        for part in [NAR[:half], NAR[half:]]
    )
    write("upload_body", "two-frames.nar.zst", frames)
    # What the server refuses: a skippable frame before the data, bytes after the last frame.
    skippable = bytes([0x50, 0x2A, 0x4D, 0x18, 6, 0, 0, 0]) + b"<html>"
    write("upload_body", "skippable-frame.nar.zst", skippable + zst)
    write("upload_body", "trailing.nar.zst", zst + b"junk")
    write("upload_body", "file.nar", FILE_NAR)


def nars() -> None:
    for target in ["nar_reader", "nar_restore"]:
        write(target, "tree.nar", NAR)
        write(target, "file.nar", FILE_NAR)
        write(target, "symlink.nar", LINK_NAR)


def lane() -> None:
    d = os.path.join(HERE, "lane_spec")
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(REPO, "docs", "lanes", "honey-gpu.toml"), os.path.join(d, "honey-gpu.toml"))


if __name__ == "__main__":
    narinfos()
    canary_runs()
    routes()
    uploads()
    nars()
    lane()
