#!/usr/bin/env python3
"""Measures how well each layering strategy keeps layers stable when one package changes.

For a fixture closure and a sample of its packages, builds the closure once as it is and once
with each package touched (`flywheel-fixture --touch PKG`: that package and every package that
depends on it get new store paths), plans the image's layers with each strategy
(`flywheel image build --dry-run --json --layering S`), and counts what a registry push would
upload after the change: the layers whose set of store paths is new. The floor is the NAR bytes
of the paths that changed, which any layering must upload.

usage: bench/layering.py [--budget-mb 1200] [--samples 16] [--max-layers 100]
Run by bench/images.sh; results go in docs/benchmarks.md.
"""
import argparse, hashlib, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FW = os.path.join(ROOT, "target/release/flywheel")
FIXTURE = os.path.join(ROOT, "target/release/flywheel-fixture")
STRATEGIES = ["cost", "auto", "popularity"]

def fixture(budget, touch=None):
    cmd = [FIXTURE, "--budget-mb", str(budget), "--max-pkg-mb", "150", "--tag", "layering", "--all"]
    if touch:
        cmd += ["--touch", touch]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return out  # every path of the closure; the root is among them

def plan(paths, strategy, max_layers):
    root = [p for p in paths if p.endswith("-flywheel-fixture-root")][0]
    out = subprocess.run([FW, "image", "build", "--dry-run", "--json", "--closure", root,
                          "--layering", strategy, "--max-layers", str(max_layers)],
                         check=True, capture_output=True, text=True).stdout
    return [(frozenset(l["paths"]), l["contentBytes"]) for l in json.loads(out)["layers"]]

def sizes(paths):
    out = subprocess.run(["nix-store", "--query", "--size"] + paths, check=True, capture_output=True, text=True).stdout
    return dict(zip(paths, map(int, out.split())))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-mb", type=int, default=1200)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-layers", type=int, default=100)
    a = ap.parse_args()
    base = fixture(a.budget_mb)
    size = sizes(base)
    pkgs = sorted(p.split("-pkg-", 1)[1] for p in base if "-pkg-" in p)
    # A fixed sample spread over the packages: the same every run.
    pkgs.sort(key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    sample = sorted(pkgs[: a.samples])
    before = {s: plan(base, s, a.max_layers) for s in STRATEGIES}
    total = {s: 0 for s in STRATEGIES}
    changed_layers = {s: 0 for s in STRATEGIES}
    floor_total = 0
    print(f"closure: {len(base)} paths, {sum(size.values()) / 1e6:.0f} MB of NAR; max layers {a.max_layers}")
    print(f"{'touched package':32} {'changed':>8} {'floor MB':>9} " + " ".join(f"{s + ' MB':>14}" for s in STRATEGIES))
    for pkg in sample:
        after = fixture(a.budget_mb, pkg)
        new = sorted(set(after) - set(base))
        floor = sum(sizes(new).values()) if new else 0
        floor_total += floor
        row = []
        for s in STRATEGIES:
            old = {paths for paths, _ in before[s]}
            layers = plan(after, s, a.max_layers)
            up = [(p, b) for p, b in layers if p not in old]
            total[s] += sum(b for _, b in up)
            changed_layers[s] += len(up)
            row.append(f"{sum(b for _, b in up) / 1e6:9.1f} ({len(up):2})")
        print(f"{pkg:32} {len(new):8} {floor / 1e6:9.1f} " + " ".join(f"{r:>14}" for r in row))
    n = len(sample)
    print(f"{'mean':32} {'':8} {floor_total / n / 1e6:9.1f} " +
          " ".join(f"{total[s] / n / 1e6:9.1f} ({changed_layers[s] / n:4.1f})" for s in STRATEGIES))
    print("upload over the floor: " + ", ".join(f"{s} {total[s] / max(floor_total, 1):.2f}x" for s in STRATEGIES))

if __name__ == "__main__":
    main()
