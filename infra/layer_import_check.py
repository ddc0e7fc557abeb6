"""Import each built zip function the way Lambda will: its code, its layers, the runtime's boto3 — nothing else.

``sam build`` succeeding says nothing about whether the layers hold every module the handlers import. This starts
a fresh, isolated Python 3.12 per zip function with ``sys.path`` = the function's build directory, its layers'
``python/`` directories and the packages the python3.12 runtime provides (boto3, botocore and their dependencies,
taken from this interpreter), sets the environment the template gives the function (the model layer's directory
standing in for /opt/model), and imports ``app`` — which runs the handler's init code (model load included).
AWS calls made at init go to a closed loopback port, never to AWS. Prints seconds per function; exits 1 on failure.

Usage: ``.venv/bin/python infra/layer_import_check.py [--build-dir .aws-sam/build]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from catalens_tools.provision import ProvisionedStack, Resolver, function_specs, load_template

# What the AWS Lambda python3.12 runtime ships besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "six", "jmespath")

PROBE = """
import json, sys, time
sys.path[:0] = json.loads(sys.argv[1])
started = time.perf_counter()
import app
assert callable(app.lambda_handler)
print(json.dumps({"import_seconds": round(time.perf_counter() - started, 2)}))
"""


def runtime_packages(into: Path) -> Path:
    """A directory of links to this interpreter's copies of the runtime-provided packages."""
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"layer_import_check: {name} is not installed here (it stands in for Lambda's runtime)")
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (into / source.name).symlink_to(source)
    return into


def python312() -> str:
    found = subprocess.run(["infra/find-python312"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise SystemExit(found.stderr.strip())
    return found.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=Path(".aws-sam/build"))
    args = parser.parse_args(argv)
    build = args.build_dir.resolve()
    template = load_template(build / "template.yaml")
    stack = ProvisionedStack(stack_name="catalens", resolver=Resolver(template, stack_name="catalens"))
    resources = template["Resources"]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        runtime = runtime_packages(Path(tmp))
        for spec in function_specs(stack).values():
            if spec.package_type == "Image":
                continue
            props = resources[spec.logical_id]["Properties"]
            layers = [build / resources[layer["Ref"]]["Properties"]["ContentUri"] for layer in props.get("Layers", [])]
            path = [str(build / str(spec.code_uri)), *(str(layer / "python") for layer in layers), str(runtime)]
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": tmp,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "layer-import-check",
                "AWS_SECRET_ACCESS_KEY": "layer-import-check",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # closed port: an init-time AWS call fails here, locally
                "AWS_LAMBDA_FUNCTION_NAME": spec.logical_id,
                "POWERTOOLS_TRACE_DISABLED": "true",
                **spec.environment,
            }
            model_layers = [layer / "model" for layer in layers if (layer / "model").is_dir()]
            if model_layers:
                env["CATALENS_MODEL_DIR"] = str(model_layers[0])
            result = subprocess.run(
                [python312(), "-I", "-B", "-c", PROBE, json.dumps(path)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                seconds = json.loads(result.stdout.strip().splitlines()[-1])["import_seconds"]
                print(f"{spec.logical_id:<22} imports from its layers in {seconds:.2f} s")
            else:
                failures.append(spec.logical_id)
                print(f"{spec.logical_id:<22} FAILED:\n{result.stderr.strip()[-3000:]}", file=sys.stderr)
    if failures:
        print(f"layer_import_check: {', '.join(failures)} cannot start with their layers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    sys.exit(main())
