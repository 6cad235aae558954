#!/usr/bin/env python3
"""Validates CDI spec files (JSON or YAML) against the CDI project's JSON schema.

usage: validate_cdi.py SCHEMA_DIR SPEC...
SCHEMA_DIR holds schema.json and defs.json as the container-device-interface project ships
them (Debian: golang-github-container-orchestrated-devices-container-device-interface-dev).
"""
import json
import pathlib
import sys
import warnings

import jsonschema
import yaml


def main() -> int:
    # RefResolver is deprecated in new jsonschema but is what Debian 12's 4.10 has.
    warnings.simplefilter("ignore", DeprecationWarning)
    schema_dir = pathlib.Path(sys.argv[1]).resolve()
    schema = json.loads((schema_dir / "schema.json").read_text())
    resolver = jsonschema.RefResolver(base_uri=(schema_dir / "schema.json").as_uri(), referrer=schema)
    validator = jsonschema.Draft7Validator(schema, resolver=resolver)
    failed = 0
    for name in sys.argv[2:]:
        text = pathlib.Path(name).read_text()
        doc = yaml.safe_load(text)  # YAML is a superset of JSON: one parser for both
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            print(f"{name}: {'/'.join(map(str, e.path))}: {e.message}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
