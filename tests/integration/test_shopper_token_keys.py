"""The template's ShopperTokenKeys custom resource: its inline Lambda code, run against moto SSM.

CloudFormation calls the function with Create/Update/Delete events and waits for the answer PUT to a pre-signed
URL; here the PUT is captured. The code under test is the template's own ``ZipFile`` text.
"""

from __future__ import annotations

import json
import types
from typing import Any

import boto3
import pytest

from catalens.service.shopper_tokens import SigningKeys, mint, verify
from catalens_tools.provision import load_template

NAME = "/catalens-test/shopper-token-keys"


@pytest.fixture
def custom_resource(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    code = load_template()["Resources"]["ShopperTokenKeysFunction"]["Properties"]["Code"]["ZipFile"]
    module = types.ModuleType("shopper_token_keys_index")
    exec(compile(code, "index.py", "exec"), module.__dict__)  # the template's inline code, as Lambda runs it
    answers: list[dict[str, Any]] = []

    class Answer:
        def close(self) -> None: ...

    def urlopen(request: Any, timeout: float) -> Answer:
        assert (request.get_method(), request.full_url) == ("PUT", "https://cloudformation-response.example/x")
        answers.append(json.loads(request.data))
        return Answer()

    monkeypatch.setattr(module.urllib.request, "urlopen", urlopen)

    def invoke(kind: str, physical: str | None = None, name: str = NAME) -> dict[str, Any]:
        event = {
            "RequestType": kind, "ResponseURL": "https://cloudformation-response.example/x", "StackId": "stack",
            "RequestId": "req-1", "LogicalResourceId": "ShopperTokenKeys",
            "ResourceProperties": {"ServiceToken": "arn", "ParameterName": name},
        }  # fmt: skip
        if physical is not None:
            event["PhysicalResourceId"] = physical
        module.handler(event, None)
        return answers[-1]

    return invoke


def test_create_puts_a_random_secure_string_and_delete_removes_it(custom_resource: Any) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    created = custom_resource("Create")
    assert (created["Status"], created["PhysicalResourceId"], created["Data"]) == (
        "SUCCESS", NAME, {"ParameterName": NAME},
    )  # fmt: skip
    parameter = ssm.get_parameter(Name=NAME, WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    keys = SigningKeys.parse(parameter["Value"])  # long enough to sign with
    assert verify(mint("alice", keys, now=0), keys, now=0) == "alice"
    assert custom_resource("Update", NAME)["Status"] == "SUCCESS"
    assert ssm.get_parameter(Name=NAME, WithDecryption=True)["Parameter"]["Value"] == parameter["Value"]  # kept

    assert custom_resource("Delete", NAME)["Status"] == "SUCCESS"
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=NAME)
    assert custom_resource("Delete", NAME)["Status"] == "SUCCESS"  # CloudFormation may retry a delete


def test_a_failed_create_never_lets_the_following_delete_remove_someone_elses_parameter(custom_resource: Any) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name=NAME, Value="left by an older stack", Type="SecureString")
    failed = custom_resource("Create")
    assert failed["Status"] == "FAILED"
    assert "ParameterAlreadyExists" in failed["Reason"]
    assert failed["PhysicalResourceId"] == "failed-req-1"
    assert custom_resource("Delete", failed["PhysicalResourceId"])["Status"] == "SUCCESS"
    assert ssm.get_parameter(Name=NAME, WithDecryption=True)["Parameter"]["Value"] == "left by an older stack"


def test_the_stack_provisioned_in_moto_has_the_same_parameter(template_stack: Any) -> None:
    name = template_stack.names["ShopperTokenKeys"]
    assert name == "/catalens-test/shopper-token-keys"
    value = boto3.client("ssm", region_name="us-east-1").get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert value["Type"] == "SecureString"
    assert len(value["Value"]) >= 32
