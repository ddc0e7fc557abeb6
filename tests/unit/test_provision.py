"""catalens_tools.provision without AWS: the CloudFormation YAML loader, intrinsics, ordering, derived templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalens_tools.provision import (
    Resolver,
    TemplateError,
    _notification_configuration,
    dependency_order,
    load_template,
    references,
    without_resources,
)

TEMPLATE = """
AWSTemplateFormatVersion: 2010-09-09
Parameters:
  Stage: {Type: String, Default: prod}
  Email: {Type: String, Default: ""}
  Size: {Type: Number, Default: 3}
Conditions:
  HasEmail: !Not [!Equals [!Ref Email, ""]]
  IsProd: !Equals [!Ref Stage, prod]
Resources:
  Dlq: {Type: AWS::SQS::Queue}
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: !Ref Size}
  Bucket:
    Type: AWS::S3::Bucket
    DependsOn: Policy
    Properties:
      BucketName: !Sub
        - shop-${AWS::Region}-${Suffix}
        - Suffix: !Select [0, !Split ["-", !Select [2, !Split ["/", !Ref AWS::StackId]]]]
  Policy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref Queue]
  Table:
    Type: AWS::DynamoDB::Table
    Condition: HasEmail
  Topic: {Type: AWS::SNS::Topic}
Outputs:
  QueueUrl: {Value: !Ref Queue}
  Note: {Value: !Sub "${!Literal} in ${Stage}"}
  Email: {Value: !If [HasEmail, !Ref Email, !Ref AWS::NoValue]}
"""


@pytest.fixture
def template(tmp_path: Path) -> dict:
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return load_template(path)


def test_short_tags_load_as_long_form_intrinsics_and_dates_stay_strings(template: dict) -> None:
    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    queue = template["Resources"]["Queue"]["Properties"]["RedrivePolicy"]
    assert queue == {"deadLetterTargetArn": {"Fn::GetAtt": ["Dlq", "Arn"]}, "maxReceiveCount": {"Ref": "Size"}}
    assert template["Conditions"]["HasEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "Email"}, ""]}]}


def test_names_resolve_as_cloudformation_would(template: dict) -> None:
    resolver = Resolver(template, stack_name="shop", region="eu-west-1", account_id="111122223333")
    bucket = resolver.physical_name("Bucket")
    suffix = resolver.pseudo["AWS::StackId"].split("/")[2].split("-")[0]
    assert bucket == f"shop-eu-west-1-{suffix}"
    queue = resolver.physical_name("Queue")
    assert queue.startswith("shop-Queue-")
    assert resolver.ref("Queue") == f"https://sqs.eu-west-1.amazonaws.com/111122223333/{queue}"
    assert resolver.get_att("Queue", "Arn") == f"arn:aws:sqs:eu-west-1:111122223333:{queue}"
    assert resolver.resolve({"Ref": "Topic"}).startswith("arn:aws:sns:eu-west-1:111122223333:shop-Topic-")


def test_parameters_conditions_sub_escapes_and_no_value(template: dict) -> None:
    plain = Resolver(template, stack_name="shop")
    assert plain.resolve(template["Outputs"]["Note"]["Value"]) == "${Literal} in prod"
    assert plain.resolve(template["Outputs"]) == {
        "QueueUrl": {"Value": plain.ref("Queue")},
        "Note": {"Value": "${Literal} in prod"},
        "Email": {},  # AWS::NoValue removes the key
    }
    assert not plain.is_created("Table")
    with_email = Resolver(template, stack_name="shop", parameters={"Email": "ops@example.com", "Stage": "dev"})
    assert with_email.resolve(template["Outputs"]["Email"]["Value"]) == "ops@example.com"
    assert with_email.is_created("Table")
    assert with_email.condition("IsProd") is False


def test_resolution_errors_name_the_problem(template: dict) -> None:
    with pytest.raises(TemplateError, match="unknown template parameters: Nope"):
        Resolver(template, stack_name="shop", parameters={"Nope": "1"})
    resolver = Resolver(template, stack_name="shop")
    with pytest.raises(TemplateError, match="no resource, parameter or pseudo parameter 'Missing'"):
        resolver.resolve({"Ref": "Missing"})
    with pytest.raises(TemplateError, match=r"cannot resolve !GetAtt Topic.Endpoint"):
        resolver.get_att("Topic", "Endpoint")
    assert resolver.get_att("Table", "StreamArn").endswith("/stream/1970-01-01T00:00:00.000")  # until created
    resolver.set_attribute("Table", "StreamArn", "arn:stream")
    assert resolver.resolve({"Fn::GetAtt": ["Table", "StreamArn"]}) == "arn:stream"


def test_references_follow_ref_getatt_and_sub(template: dict) -> None:
    assert references({"Fn::Sub": "${Queue.Arn}/x/${AWS::Region}/${!Skip}"}) == {"Queue", "AWS::Region"}
    assert references(template["Resources"]["Queue"]) == {"Dlq", "Size"}


def test_dependency_order_puts_targets_first_and_refuses_cycles(template: dict) -> None:
    resources = template["Resources"]
    order = dependency_order(resources, ["Bucket", "Policy", "Queue", "Dlq"])
    assert order.index("Dlq") < order.index("Queue") < order.index("Policy") < order.index("Bucket")
    resources["Dlq"]["Properties"] = {"Tags": [{"Key": "k", "Value": {"Ref": "Bucket"}}]}
    with pytest.raises(TemplateError, match=r"circular dependency: .*Bucket"):
        dependency_order(resources, list(resources))


def test_without_resources_drops_dependents_and_their_outputs(template: dict) -> None:
    reduced = without_resources(template, ["Dlq"])
    # Queue refers to Dlq, Policy to Queue, and Bucket DependsOn Policy: all go, transitively
    assert set(reduced["Resources"]) == {"Table", "Topic"}
    assert set(reduced["Outputs"]) == {"Note", "Email"}
    assert "Dlq" in template["Resources"]  # the original is untouched
    with pytest.raises(TemplateError, match="no resources Nope"):
        without_resources(template, ["Nope"])


def test_bucket_notifications_convert_to_the_api_shape() -> None:
    cfn = {
        "QueueConfigurations": [
            {"Event": "s3:ObjectCreated:*", "Queue": "arn:q",
             "Filter": {"S3Key": {"Rules": [{"Name": "suffix", "Value": ".jpg"}]}}},
            {"Event": "s3:ObjectRemoved:*", "Queue": "arn:q"},
        ]
    }  # fmt: skip
    assert _notification_configuration(cfn) == {
        "QueueConfigurations": [
            {"QueueArn": "arn:q", "Events": ["s3:ObjectCreated:*"],
             "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".jpg"}]}}},
            {"QueueArn": "arn:q", "Events": ["s3:ObjectRemoved:*"]},
        ]
    }  # fmt: skip


def test_the_repository_template_loads_and_its_names_resolve() -> None:
    template = load_template()
    resolver = Resolver(template, stack_name="catalens")
    assert resolver.physical_name("CatalogBucket").startswith("catalens-catalog-123456789012-us-east-1-")
    assert resolver.physical_name("IndexBucket").startswith("catalens-index-123456789012-us-east-1-")
