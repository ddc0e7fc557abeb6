"""template.yaml and the files the deploy path builds from: linted, consistent, and explained.

cfn-lint 1.x no longer runs the SAM transform (and so misses cycles among generated resources): the template is
linted as written and again after a local transform. ``sam validate --lint`` and the checkov scan run in
``make deploy-checks`` (their tools live in virtualenvs of their own).
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from catalens_tools.provision import load_template, transform_template

REPO = Path(__file__).resolve().parents[2]
# Findings the SAM transform itself causes in the transformed template (not fixable in template.yaml):
# W2001: parameters SAM inlines (the usage plan quota), still used in the source template, which is linted too;
# W3005: the DependsOn SAM adds beside a Ref.
TRANSFORM_ARTEFACTS = ["W2001", "W3005"]


def cfn_lint(path: Path, ignore: list[str] | None = None) -> list[str]:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(path, config=ManualArgs(regions=["eu-west-1", "us-east-1"], ignore_checks=ignore or []))
    return [f"{m.rule.id} {m.message} ({m.filename}:{m.linenumber})" for m in matches]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def test_cfn_lint_finds_nothing_in_the_template() -> None:
    assert cfn_lint(REPO / "template.yaml") == []


def test_cfn_lint_finds_nothing_in_the_transformed_template(template: dict, tmp_path: Path) -> None:
    transformed = tmp_path / "template.transformed.json"
    transformed.write_text(json.dumps(transform_template(template)))
    assert cfn_lint(transformed, ignore=TRANSFORM_ARTEFACTS) == []


def test_cfn_lint_would_catch_a_broken_template(template: dict, tmp_path: Path) -> None:
    broken = json.loads(json.dumps(template))
    broken["Resources"]["EventsTable"]["Properties"]["BillingMode"] = "FREE"
    broken["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"]["X"] = {"Ref": "NoSuchThing"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    findings = cfn_lint(path)
    assert any(f.startswith("E3030 'FREE'") for f in findings), findings
    assert any(f.startswith("E1020 'NoSuchThing'") for f in findings), findings


def test_every_layer_has_a_makefile_target_sam_can_run(template: dict) -> None:
    layers = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::LayerVersion"}
    assert set(layers) == {"DepsLayer", "ModelLayer", "CoreLayer"}
    for logical_id, layer in layers.items():
        assert layer["Metadata"] == {"BuildMethod": "makefile"}
        makefile = REPO / layer["Properties"]["ContentUri"] / "Makefile"
        assert re.search(rf"^build-{logical_id}:", makefile.read_text(), re.MULTILINE), makefile


def test_every_function_points_at_a_handler_that_exists(template: dict) -> None:
    functions = {
        k: r["Properties"] for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"
    }
    assert set(functions) == {"IngestFunction", "SearchFunction", "ProfilesFunction", "IndexBuilderFunction"}
    for logical_id, props in functions.items():
        if props.get("PackageType") == "Image":
            metadata = template["Resources"][logical_id]["Metadata"]
            dockerfile = REPO / metadata["DockerContext"] / metadata["Dockerfile"]
            assert 'CMD ["app.lambda_handler"]' in dockerfile.read_text()
            source = dockerfile.parent / "app.py"
        else:
            assert props["Runtime"] == "python3.12"
            module, function = props["Handler"].split(".")
            source = REPO / props["CodeUri"] / f"{module}.py"
            assert function == "lambda_handler"
        assert re.search(r"^def lambda_handler\(", source.read_text(), re.MULTILINE), source


def test_zip_functions_run_on_the_layers_they_need(template: dict) -> None:
    resources = template["Resources"]

    def layers(function: str) -> list[str]:
        return [layer["Ref"] for layer in resources[function]["Properties"]["Layers"]]

    assert layers("IngestFunction") == ["DepsLayer", "ModelLayer", "CoreLayer"]
    assert layers("SearchFunction") == ["DepsLayer", "ModelLayer", "CoreLayer"]
    assert layers("ProfilesFunction") == ["DepsLayer", "CoreLayer"]  # no model: it reads vectors from the index


def test_deps_layer_pins_satisfy_the_package_requirements() -> None:
    pins = {}
    for line in (REPO / "layers/deps/requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{line}: the layer list is a lock, pin it exactly"
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    runtime = {"boto3"}  # the python3.12 runtime ships it; the layer must not shadow it
    for declared in requires("catalens") or []:
        requirement = Requirement(declared)
        if requirement.marker is not None:
            continue  # extras: the model builder, the index builder, dev tools
        name = requirement.name.lower()
        if name in runtime:
            assert name not in pins
            continue
        assert name in pins, f"{name} is a catalens dependency but not in the deps layer"
        assert requirement.specifier.contains(pins[name]), (
            f"layer pins {name}=={pins[name]}, catalens wants {requirement}"
        )


def test_every_skipped_security_check_is_explained_in_the_operations_guide() -> None:
    config = (REPO / "infra/checkov.yaml").read_text()
    skipped = re.findall(r"^\s*-\s*(CKV\w+)", config, re.MULTILINE)
    assert skipped
    guide = (REPO / "docs/operations.md").read_text()
    start = guide.index("### Security scan")
    end = guide.find("\n## ", start)
    section = guide[start : end if end != -1 else None]
    missing = [check for check in skipped if check not in section]
    assert missing == [], f"explain these skipped checkov checks in docs/operations.md (Security scan): {missing}"


def test_samconfig_overrides_only_parameters_the_template_declares(template: dict) -> None:
    config = tomllib.loads((REPO / "infra/samconfig.toml").read_text())
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    overrides = dict(pair.split("=", 1) for pair in deploy["parameter_overrides"].split())
    assert set(overrides) <= set(template["Parameters"])
    for name, value in overrides.items():
        allowed = template["Parameters"][name].get("AllowedValues")
        assert allowed is None or value in map(str, allowed), f"{name}={value}"
    assert config["default"]["build"]["parameters"]["cached"] is False  # layers read shared/, outside their folders
