"""``catalens template ...``: forms of template.yaml the deploy checks need.

- ``transform``: the template after the SAM transform, computed locally (what cfn-lint and checkov scan);
- ``zip-only``: the template without its image functions, so ``sam build`` runs on a machine without Docker.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from catalens_tools.cli import group


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "template", "forms of template.yaml for the deploy checks")
    for name, help_text, func in (
        ("transform", "write the SAM-transformed template (plain CloudFormation JSON)", _transform),
        ("zip-only", "write the template without image functions (sam build without Docker)", _zip_only),
    ):
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument("--template", type=Path, default=None, help="default: the repository's template.yaml")
        parser.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
        if name == "transform":
            parser.add_argument("--region", default="us-east-1", help="region the transform assumes")
        parser.set_defaults(func=func)


def _load(args: argparse.Namespace) -> dict:
    from catalens_tools.provision import DEFAULT_TEMPLATE, load_template

    return load_template(args.template or DEFAULT_TEMPLATE)


def _write(args: argparse.Namespace, document: dict) -> int:
    text = json.dumps(document, indent=1, sort_keys=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _transform(args: argparse.Namespace) -> int:
    from catalens_tools.provision import transform_template

    return _write(args, transform_template(_load(args), region=args.region))


def _zip_only(args: argparse.Namespace) -> int:
    from catalens_tools.provision import without_resources

    template = _load(args)
    images = [
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource.get("Type") == "AWS::Serverless::Function"
        and (resource.get("Properties") or {}).get("PackageType") == "Image"
    ]
    return _write(args, without_resources(template, images))
