#!/usr/bin/env python3
"""Writes k8s-podspec-v1.33-strict.json: Kubernetes' PodSpec schema with only the definitions it
reaches, in one self-contained file. Input: the v1.33.0-local-strict directory of the
kubernetes-validate wheel (PyPI; Apache-2.0), which carries Kubernetes' own OpenAPI schemas.

    pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-*.whl
    python3 bundle-podspec.py kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict
"""
import json
import sys
from pathlib import Path

src = Path(sys.argv[1])
podspec = json.loads((src / "podspec-v1.json").read_text())
defs = json.loads((src / "_definitions.json").read_text())["$defs"]
PREFIX = "/api/_definitions.json#/$defs/"

keep = {}


def walk(node):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith((PREFIX, "#/$defs/")):
            name = ref.rsplit("/", 1)[1]
            node["$ref"] = "#/$defs/" + name
            if name not in keep:
                keep[name] = defs[name]
                walk(keep[name])
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)


walk(podspec)
podspec["$schema"] = "https://json-schema.org/draft/2020-12/schema"
podspec["$comment"] = ("Kubernetes v1.33 PodSpec (strict: no unknown fields), bundled by "
                       "bundle-podspec.py from the kubernetes-validate 1.37.0 wheel")
podspec["$defs"] = dict(sorted(keep.items()))
out = Path(__file__).with_name("k8s-podspec-v1.33-strict.json")
out.write_text(json.dumps(podspec, indent=1, sort_keys=True) + "\n")
print(out, len(keep), "definitions")
