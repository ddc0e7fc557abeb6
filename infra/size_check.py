"""Fail the build when a zip function plus its layers exceeds Lambda's 250 MB unzipped limit.

Reads the template ``sam build`` wrote (``.aws-sam/build/template.yaml``), finds each zip function's code
directory and the directories of the layers it lists, adds up their file sizes (what Lambda counts: the
unzipped bytes), prints one line per function and a JSON summary, and exits 1 if any total is over the limit
(or over ``--limit-mb``). Functions packaged as images are skipped: their limit is 10 GB and another check.

Usage::

    .venv/bin/python infra/size_check.py [--build-dir .aws-sam/build] [--limit-mb 250]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from catalens_tools.provision import TemplateError, load_template

MIB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024  # 262,144,000 bytes: function code + all its layers


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks counted as links, as zip stores them)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def _layer_ids(layers: list[Any]) -> list[str]:
    """Logical ids of the template's own layers (``!Ref DepsLayer``); layer ARNs from elsewhere are not measured."""
    ids = []
    for layer in layers:
        if isinstance(layer, dict) and isinstance(layer.get("Ref"), str):
            ids.append(layer["Ref"])
        else:
            raise SystemExit(f"size_check: cannot measure layer {layer!r} (only layers of this template)")
    return ids


def measure(build_dir: Path) -> list[dict[str, Any]]:
    """One row per zip function: its code bytes, each layer's bytes, and the total."""
    template = load_template(build_dir / "template.yaml")
    resources = template["Resources"]
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    rows = []
    for logical_id, resource in sorted(resources.items()):
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        if props.get("PackageType", globals_.get("PackageType", "Zip")) == "Image":
            continue
        code_dir = build_dir / str(props.get("CodeUri", logical_id))
        if not code_dir.exists():
            raise SystemExit(f"size_check: {code_dir} is missing - run sam build first")
        layers = {}
        for layer_id in _layer_ids(props.get("Layers", globals_.get("Layers", []))):
            layer_props = resources[layer_id].get("Properties") or {}
            layer_dir = build_dir / str(layer_props.get("ContentUri", layer_id))
            if not layer_dir.exists():
                raise SystemExit(f"size_check: {layer_dir} is missing - run sam build first")
            layers[layer_id] = tree_bytes(layer_dir)
        code = tree_bytes(code_dir)
        rows.append(
            {"function": logical_id, "code_bytes": code, "layers": layers, "total_bytes": code + sum(layers.values())}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=Path(".aws-sam/build"))
    parser.add_argument("--limit-mb", type=float, default=LAMBDA_UNZIPPED_LIMIT_BYTES / (1024 * 1024))
    args = parser.parse_args(argv)
    limit = int(args.limit_mb * 1024 * 1024)
    try:
        rows = measure(args.build_dir)
    except TemplateError as exc:
        print(f"size_check: {exc} - run sam build first", file=sys.stderr)
        return 2
    if not rows:
        print(f"size_check: no zip functions in {args.build_dir}/template.yaml", file=sys.stderr)
        return 2
    over = [row["function"] for row in rows if row["total_bytes"] > limit]
    for row in rows:
        parts = ", ".join(f"{name} {size / MIB:.1f}" for name, size in row["layers"].items())
        verdict = "OVER" if row["function"] in over else "ok"
        print(
            f"{row['function']:<22} {row['total_bytes'] / MIB:7.1f} MiB "
            f"(code {row['code_bytes'] / MIB:.2f}; {parts})  limit {limit / MIB:.0f} MiB  {verdict}"
        )
    print(json.dumps({"limit_bytes": limit, "functions": rows, "over_limit": over}))
    if over:
        print(f"size_check: over Lambda's unzipped limit: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
