"""Create the stack's stateful resources from ``template.yaml`` itself, in moto or any AWS-compatible endpoint.

Tests and the local stack must not keep their own copy of the infrastructure: a table's key schema, a queue's
redrive policy or a bucket's notifications written twice drift apart. This module reads the template, resolves the
intrinsic functions the way CloudFormation would for a given stack name (``!Ref``, ``!Sub``, ``!GetAtt``, ``!If``,
``!Select``/``!Split``/``!Join``, conditions, pseudo parameters), and creates, in dependency order:

- S3 buckets (name, versioning, encryption, public access block, bucket policy, notifications to SQS),
- SQS queues (attributes, redrive policy to the dead-letter queue, queue policies),
- DynamoDB tables (key schema, GSIs/LSIs, billing mode, stream, TTL, point-in-time recovery),
- the ``Custom::RandomSecureParameter`` custom resource: what its Lambda does on AWS (an SSM SecureString holding a
  random key, named by its ``ParameterName`` property), done directly, or with a value the caller supplies.

Functions, roles and the API are not created (moto cannot run them without Docker): :func:`function_specs` and
:func:`api_spec` describe them, resolved, so a local dispatcher can run the handlers with the same environment,
event sources and routes as AWS.

Example
-------
>>> template = load_template()                                       # doctest: +SKIP
>>> stack = provision(boto3.Session(region_name="us-east-1"), template, stack_name="catalens")  # doctest: +SKIP
>>> stack.names["CatalogBucket"]                                     # doctest: +SKIP
'catalens-catalog-123456789012-us-east-1-5b1d3a62'

No boto3 import here: the caller hands in a session (anything with ``.client(name, **kwargs)``), which keeps the
core free of AWS and lets tests choose moto in-process or a moto server.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from catalens.errors import CatalensError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_REGION = "us-east-1"

RANDOM_SECURE_PARAMETER = "Custom::RandomSecureParameter"


class TemplateError(CatalensError):
    """The template cannot be read or resolved (unknown intrinsic, missing parameter, dependency cycle)."""

    code = "template_error"


# ---------------------------------------------------------------------------------------------------------- loading
@functools.cache
def _cfn_loader() -> type:
    """A YAML loader for CloudFormation: short tags become long-form intrinsics; dates stay strings.

    Built on first use so that importing this module does not need PyYAML (the Lambda layers do not ship it).
    """
    import yaml

    class CfnLoader(yaml.SafeLoader):
        pass

    # CloudFormation reads "2010-09-09" as a string; YAML 1.1 would make it a date.
    CfnLoader.yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if tag_suffix in ("Ref", "Condition"):
            return {tag_suffix: value}
        if tag_suffix == "GetAtt" and isinstance(value, str):
            resource, _, attribute = value.partition(".")
            return {"Fn::GetAtt": [resource, attribute]}
        return {f"Fn::{tag_suffix}": value}

    CfnLoader.add_multi_constructor("!", construct_intrinsic)
    return CfnLoader


def load_template(path: Path | str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """The template as plain data, short-form intrinsics (``!Ref x``) in their long form (``{"Ref": "x"}``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from exc
    import yaml

    try:
        loaded = yaml.load(text, Loader=_cfn_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TemplateError(f"template {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict) or "Resources" not in loaded:
        raise TemplateError(f"template {path} has no Resources section")
    return loaded


# ---------------------------------------------------------------------------------------------------------- transform
class _StubManagedPolicyLoader:
    """The SAM translator asks IAM for AWS managed policy ARNs; offline we answer with their well-known ARNs."""

    def load(self) -> dict[str, str]:
        names = [
            "AWSLambdaBasicExecutionRole",
            "AWSLambdaSQSQueueExecutionRole",
            "AWSLambdaDynamoDBExecutionRole",
            "AWSXrayWriteOnlyAccess",
            "AWSLambdaRole",
        ]
        return {name: f"arn:aws:iam::aws:policy/service-role/{name}" for name in names}


def transform_template(
    template: Mapping[str, Any], parameters: Mapping[str, Any] | None = None, *, region: str = DEFAULT_REGION
) -> dict[str, Any]:
    """The template after the SAM transform (plain CloudFormation), computed locally with ``aws-sam-translator``.

    This is what CloudFormation deploys: the policy test and the linters read it, because SAM adds resources
    (permissions, event source mappings, the API deployment, the usage plan) that the source template only implies.
    No AWS call is made: managed policy ARNs come from a stub and the region from ``region``.
    """
    from samtranslator.parser.parser import Parser  # deploy-time dependency, imported on use
    from samtranslator.translator.translator import Translator
    from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template

    # Without a feature-toggle config the translator warns about every toggle it looks up: noise, not a finding.
    logging.getLogger("samtranslator.feature_toggle.feature_toggle").setLevel(logging.ERROR)
    source = _as_packaged(template, region)
    parameter_values = dict(parameters or {})
    to_py27_compatible_template(source, parameter_values)
    session = SimpleNamespace(region_name=region)  # all the translator reads from a boto3 session
    translator = Translator(None, Parser(), boto_session=session)  # type: ignore[arg-type]
    loader = _StubManagedPolicyLoader()
    transformed = translator.translate(source, parameter_values=parameter_values, get_managed_policy_map=loader.load)
    return undo_mark_unicode_str_in_template(transformed)


def _as_packaged(template: Mapping[str, Any], region: str) -> dict[str, Any]:
    """A copy of the template with local code paths replaced by artifact URIs, as ``sam package`` would leave it."""
    packaged = json.loads(json.dumps(template))
    for logical_id, resource in packaged.get("Resources", {}).items():
        props = resource.get("Properties") or {}
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function" and props.get("PackageType") == "Image":
            props.setdefault("ImageUri", f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com/catalens:{logical_id}")
        elif kind == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = f"s3://catalens-artifacts/{logical_id}.zip"
        elif kind == "AWS::Serverless::LayerVersion" and isinstance(props.get("ContentUri"), str):
            props["ContentUri"] = f"s3://catalens-artifacts/{logical_id}.zip"
    return packaged


def without_resources(template: Mapping[str, Any], logical_ids: Iterable[str]) -> dict[str, Any]:
    """A copy of the template without ``logical_ids`` and everything that refers to them (resources and outputs).

    ``sam build`` of the zip functions and layers on a machine without Docker: the builder image is the one
    resource that needs it, and ``sam build`` builds all or one resource, nothing in between.
    """
    result = json.loads(json.dumps(template))
    resources = result["Resources"]
    dropped = set(logical_ids)
    missing = dropped - set(resources)
    if missing:
        raise TemplateError(f"the template has no resources {', '.join(sorted(missing))}")
    changed = True
    while changed:
        changed = False
        for logical_id, resource in list(resources.items()):
            if logical_id in dropped:
                continue
            depends_on = resource.get("DependsOn", [])
            depends_on = {depends_on} if isinstance(depends_on, str) else set(depends_on)
            if (references(resource) | depends_on) & dropped:
                dropped.add(logical_id)
                changed = True
    for logical_id in dropped:
        resources.pop(logical_id, None)
    outputs = result.get("Outputs", {})
    for name, output in list(outputs.items()):
        if references(output) & dropped:
            del outputs[name]
    return result


# ---------------------------------------------------------------------------------------------------------- resolving
def _short_hash(*parts: str, length: int = 12) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length].upper()


class Resolver:
    """Evaluates a template's intrinsic functions for one stack, as CloudFormation would.

    Physical names of resources without an explicit name follow CloudFormation's pattern
    ``<stack>-<LogicalId>-<suffix>`` with a suffix derived from the stack name, so they are stable between runs.
    Attributes only known after creation (a table's stream ARN) are filled in with :meth:`set_attribute`.

    Parameters
    ----------
    template : dict
        The loaded template (:func:`load_template`).
    stack_name : str
        Stack name; ``AWS::StackId`` is derived from it deterministically.
    region, account_id : str
        Values of ``AWS::Region`` and ``AWS::AccountId`` (moto's defaults).
    parameters : mapping, optional
        Parameter overrides; every other parameter takes its ``Default``.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        stack_name: str,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.template = template
        self.stack_name = stack_name
        self.region = region
        self.account_id = account_id
        stack_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"catalens:{account_id}:{region}:{stack_name}")
        self.pseudo: dict[str, Any] = {
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/{stack_uuid}",
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }
        self.parameters = self._parameter_values(parameters or {})
        self.resources: dict[str, Any] = dict(template.get("Resources", {}))
        self._attributes: dict[tuple[str, str], Any] = {}
        self._conditions: dict[str, bool] = {}

    def _parameter_values(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        declared = self.template.get("Parameters", {}) or {}
        unknown = set(overrides) - set(declared)
        if unknown:
            raise TemplateError(f"unknown template parameters: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in overrides:
                values[name] = str(overrides[name])
            elif "Default" in spec:
                values[name] = str(spec["Default"])
            else:
                raise TemplateError(f"template parameter {name} has no default and no value was given")
        return values

    # ---- names and attributes
    def physical_name(self, logical_id: str) -> str:
        """The name CloudFormation gives the resource: its explicit name property, else a generated one."""
        resource = self._resource(logical_id)
        kind = resource["Type"]
        explicit = {
            "AWS::S3::Bucket": "BucketName",
            "AWS::SQS::Queue": "QueueName",
            "AWS::DynamoDB::Table": "TableName",
            "AWS::Serverless::Function": "FunctionName",
            "AWS::Lambda::Function": "FunctionName",
            "AWS::Events::Rule": "Name",
            "AWS::IAM::Role": "RoleName",
            "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::SNS::Topic": "TopicName",
            "AWS::CloudWatch::Alarm": "AlarmName",
            "AWS::S3Vectors::VectorBucket": "VectorBucketName",
            "AWS::S3Vectors::Index": "IndexName",
        }.get(kind)
        properties = resource.get("Properties", {}) or {}
        if explicit and properties.get(explicit) is not None:
            return str(self.resolve(properties[explicit]))
        suffix = _short_hash(self.pseudo["AWS::StackId"], logical_id)
        if kind == "AWS::S3::Bucket":
            return f"{self.stack_name}-{logical_id}-{suffix}".lower()[:63]
        if kind == "AWS::SQS::Queue" and properties.get("FifoQueue"):
            return f"{self.stack_name}-{logical_id}-{suffix}"[:75] + ".fifo"
        return f"{self.stack_name}-{logical_id}-{suffix}"

    def set_attribute(self, logical_id: str, attribute: str, value: Any) -> None:
        """Record an attribute learnt at creation (``StreamArn``), so later references resolve to the real value."""
        self._attributes[(logical_id, attribute)] = value

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if (name, "Ref") in self._attributes:  # a custom resource's physical id, recorded when it was created
            return self._attributes[(name, "Ref")]
        resource = self._resource(name)
        if resource["Type"] == "AWS::SQS::Queue":
            return self.get_att(name, "QueueUrl")
        if resource["Type"] == "AWS::SNS::Topic":
            return self.get_att(name, "TopicArn")
        return self.physical_name(name)

    def get_att(self, logical_id: str, attribute: str) -> Any:
        if (logical_id, attribute) in self._attributes:
            return self._attributes[(logical_id, attribute)]
        kind = self._resource(logical_id)["Type"]
        name = self.physical_name(logical_id)
        region, account = self.region, self.account_id
        known: dict[tuple[str, str], Callable[[], Any]] = {
            ("AWS::S3::Bucket", "Arn"): lambda: f"arn:aws:s3:::{name}",
            ("AWS::S3Vectors::VectorBucket", "VectorBucketArn"): lambda: (
                f"arn:aws:s3vectors:{region}:{account}:bucket/{name}"
            ),
            ("AWS::S3Vectors::Index", "IndexArn"): lambda: self._index_arn(logical_id, name),
            ("AWS::S3::Bucket", "DomainName"): lambda: f"{name}.s3.amazonaws.com",
            ("AWS::SQS::Queue", "Arn"): lambda: f"arn:aws:sqs:{region}:{account}:{name}",
            ("AWS::SQS::Queue", "QueueName"): lambda: name,
            ("AWS::SQS::Queue", "QueueUrl"): lambda: f"https://sqs.{region}.amazonaws.com/{account}/{name}",
            ("AWS::DynamoDB::Table", "Arn"): lambda: f"arn:aws:dynamodb:{region}:{account}:table/{name}",
            # the stream label is the creation time; provision() records the real ARN over this placeholder
            ("AWS::DynamoDB::Table", "StreamArn"): lambda: (
                f"arn:aws:dynamodb:{region}:{account}:table/{name}/stream/1970-01-01T00:00:00.000"
            ),
            ("AWS::SNS::Topic", "TopicArn"): lambda: f"arn:aws:sns:{region}:{account}:{name}",
            ("AWS::Logs::LogGroup", "Arn"): lambda: f"arn:aws:logs:{region}:{account}:log-group:{name}:*",
            ("AWS::Serverless::Function", "Arn"): lambda: f"arn:aws:lambda:{region}:{account}:function:{name}",
            ("AWS::CloudWatch::Alarm", "Arn"): lambda: f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}",
            ("AWS::Lambda::Function", "Arn"): lambda: f"arn:aws:lambda:{region}:{account}:function:{name}",
            ("AWS::Events::Rule", "Arn"): lambda: f"arn:aws:events:{region}:{account}:rule/{name}",
            ("AWS::IAM::Role", "Arn"): lambda: f"arn:aws:iam::{account}:role/{name}",
        }
        if kind.startswith("Custom::") and attribute in (self._resource(logical_id).get("Properties") or {}):
            # the template's custom resources return their inputs as Data (ShopperTokenKeys: ParameterName)
            return self.resolve(self._resource(logical_id)["Properties"][attribute])
        if (kind, attribute) not in known:
            raise TemplateError(f"cannot resolve !GetAtt {logical_id}.{attribute} ({kind}) before it is created")
        return known[(kind, attribute)]()

    def _index_arn(self, logical_id: str, name: str) -> str:
        bucket_arn = self.resolve(self._resource(logical_id)["Properties"]["VectorBucketArn"])
        return f"{bucket_arn}/index/{name}"

    def _resource(self, logical_id: str) -> dict[str, Any]:
        try:
            return self.resources[logical_id]
        except KeyError:
            raise TemplateError(f"the template has no resource, parameter or pseudo parameter {logical_id!r}") from None

    # ---- conditions
    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            try:
                definition = self.template["Conditions"][name]
            except KeyError:
                raise TemplateError(f"the template has no condition {name!r}") from None
            self._conditions[name] = bool(self.resolve(definition))
        return self._conditions[name]

    def is_created(self, logical_id: str) -> bool:
        """False for a resource whose ``Condition`` is false (CloudFormation skips it)."""
        condition = self._resource(logical_id).get("Condition")
        return condition is None or self.condition(condition)

    # ---- intrinsic functions
    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic function evaluated; ``AWS::NoValue`` removes the key or list item."""
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), *_ = value.items()
            handler = _INTRINSICS.get(key)
            if handler is not None:
                result = handler(self, argument)
                return _NO_VALUE if result is None and key == "Ref" else result
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument[0], {k: self.resolve(v) for k, v in argument[1].items()}
        else:
            text, variables = argument, {}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal} escapes
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".", 1)[0] in self.resources:
                resource, attribute = name.split(".", 1)
                return str(self.get_att(resource, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", substitute, text)

    def _if(self, argument: list[Any]) -> Any:
        name, when_true, when_false = argument
        return self.resolve(when_true if self.condition(name) else when_false)

    def _select(self, argument: list[Any]) -> Any:
        index, items = self.resolve(argument[0]), self.resolve(argument[1])
        return items[int(index)]

    def _split(self, argument: list[Any]) -> list[str]:
        delimiter, text = argument[0], self.resolve(argument[1])
        return str(text).split(delimiter)

    def _join(self, argument: list[Any]) -> str:
        delimiter, items = argument[0], self.resolve(argument[1])
        return delimiter.join(str(item) for item in items)

    def _get_att(self, argument: list[str] | str) -> Any:
        if isinstance(argument, str):
            resource, _, attribute = argument.partition(".")
        else:
            resource, attribute = argument[0], self.resolve(argument[1])
        return self.get_att(resource, attribute)

    def _find_in_map(self, argument: list[Any]) -> Any:
        name, top, second = (self.resolve(part) for part in argument)
        return self.template["Mappings"][name][top][second]


_NO_VALUE = object()

_INTRINSICS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": lambda r, a: r.ref(a),
    "Fn::Sub": Resolver._sub,
    "Fn::GetAtt": Resolver._get_att,
    "Fn::If": Resolver._if,
    "Fn::Select": Resolver._select,
    "Fn::Split": Resolver._split,
    "Fn::Join": Resolver._join,
    "Fn::FindInMap": Resolver._find_in_map,
    "Fn::Equals": lambda r, a: r.resolve(a[0]) == r.resolve(a[1]),
    "Fn::Not": lambda r, a: not r.resolve(a[0]),
    "Fn::And": lambda r, a: all(r.resolve(c) for c in a),
    "Fn::Or": lambda r, a: any(r.resolve(c) for c in a),
    "Condition": lambda r, a: r.condition(a),
}


def references(value: Any) -> set[str]:
    """Logical ids a value refers to (``Ref``, ``GetAtt``, ``${Name}`` / ``${Name.Attr}`` in ``Sub``)."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        for key, argument in value.items():
            if key == "Ref" and isinstance(argument, str):
                found.add(argument)
            elif key == "Fn::GetAtt":
                found.add(argument.split(".", 1)[0] if isinstance(argument, str) else argument[0])
            elif key == "Fn::Sub":
                text = argument[0] if isinstance(argument, list) else argument
                found |= {m.split(".", 1)[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                if isinstance(argument, list):
                    found |= references(argument[1])
            else:
                found |= references(argument)
    return found


# ------------------------------------------------------------------------------------------------------ provisioning
@dataclass
class ProvisionedStack:
    """What :func:`provision` created: physical names, queue URLs, table stream ARNs, and the resolver behind them."""

    stack_name: str
    resolver: Resolver
    names: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    stream_arns: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        return self.resolver.resolve(value)


def provision(
    session: Any,
    template: Mapping[str, Any],
    *,
    stack_name: str,
    endpoint_url: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    account_id: str = DEFAULT_ACCOUNT_ID,
    bucket_policies: bool = False,
    versioning: bool = True,
    secure_values: Mapping[str, str] | None = None,
) -> ProvisionedStack:
    """Create the template's buckets, queues and tables through ``session`` (boto3-like), in dependency order.

    Parameters
    ----------
    session :
        Anything with ``client(service_name, **kwargs)`` and a ``region_name`` (a ``boto3.Session``).
    template :
        The loaded template (:func:`load_template`).
    stack_name :
        Names resolve as CloudFormation would resolve them for a stack of this name.
    endpoint_url :
        A moto server (``http://127.0.0.1:PORT``); None for in-process moto (``mock_aws``) or the session's default.
    bucket_policies :
        Also apply ``AWS::S3::BucketPolicy`` resources. Off by default: the template's bucket policies deny requests
        without TLS, and moto (which evaluates bucket policies but not ``aws:SecureTransport``) then refuses every
        request, as it must for a local moto server spoken to over plain HTTP. The policy tests check them statically.
    secure_values :
        Values of ``Custom::RandomSecureParameter`` resources by logical id (the local stack keeps its shopper-token
        key between runs); the others get a random value, as the custom resource's Lambda gives them on AWS.
    """
    region = getattr(session, "region_name", None) or DEFAULT_REGION
    resolver = Resolver(template, stack_name=stack_name, region=region, account_id=account_id, parameters=parameters)
    stack = ProvisionedStack(stack_name=stack_name, resolver=resolver)
    kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(service, **kwargs)
        return clients[service]

    stack.options["versioning"] = versioning
    stack.options["secure_values"] = dict(secure_values or {})
    creators: dict[str, Callable[[ProvisionedStack, str, dict[str, Any], Callable[[str], Any]], None]] = {
        "AWS::SQS::Queue": _create_queue,
        "AWS::SQS::QueuePolicy": _apply_queue_policy,
        "AWS::DynamoDB::Table": _create_table,
        "AWS::S3::Bucket": _create_bucket,
        "AWS::S3::BucketPolicy": _apply_bucket_policy,
        "AWS::S3Vectors::VectorBucket": _create_vector_bucket,
        "AWS::S3Vectors::Index": _create_vector_index,
        RANDOM_SECURE_PARAMETER: _put_random_secure_parameter,
    }
    wanted = [
        logical_id
        for logical_id, resource in resolver.resources.items()
        if resource["Type"] in creators
        and resolver.is_created(logical_id)
        and (bucket_policies or resource["Type"] != "AWS::S3::BucketPolicy")
    ]
    for logical_id in dependency_order(resolver.resources, wanted):
        resource = resolver.resources[logical_id]
        creators[resource["Type"]](stack, logical_id, resource, client)
    return stack


def dependency_order(resources: Mapping[str, Any], wanted: Iterable[str]) -> list[str]:
    """``wanted`` sorted so that each resource comes after the wanted resources it refers to or depends on."""
    wanted = list(wanted)
    wanted_set = set(wanted)
    deps: dict[str, set[str]] = {}
    for logical_id in wanted:
        resource = resources[logical_id]
        depends_on = resource.get("DependsOn", [])
        depends_on = [depends_on] if isinstance(depends_on, str) else list(depends_on)
        deps[logical_id] = (references(resource.get("Properties", {})) | set(depends_on)) & wanted_set - {logical_id}
    ordered: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in done:
            return
        if node in visiting:
            raise TemplateError(f"circular dependency: {' -> '.join((*path, node))}")
        visiting.add(node)
        for dep in sorted(deps[node]):
            visit(dep, (*path, node))
        visiting.discard(node)
        done.add(node)
        ordered.append(node)

    for logical_id in wanted:
        visit(logical_id, ())
    return ordered


# ---- SQS
_QUEUE_ATTRIBUTES = {
    "DelaySeconds": "DelaySeconds",
    "MaximumMessageSize": "MaximumMessageSize",
    "MessageRetentionPeriod": "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout": "VisibilityTimeout",
    "FifoQueue": "FifoQueue",
    "ContentBasedDeduplication": "ContentBasedDeduplication",
    "SqsManagedSseEnabled": "SqsManagedSseEnabled",
}


def _create_queue(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource.get("Properties", {}) or {})
    name = stack.resolver.physical_name(logical_id)
    attributes = {api: _attribute_text(props[cfn]) for cfn, api in _QUEUE_ATTRIBUTES.items() if cfn in props}
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    url = client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.names[logical_id] = name
    stack.queue_urls[logical_id] = url
    stack.resolver.set_attribute(logical_id, "QueueUrl", url)
    stack.resolver.set_attribute(logical_id, "Arn", arn)


def _attribute_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _apply_queue_policy(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource["Properties"])
    policy = json.dumps(props["PolicyDocument"])
    for queue_url in props["Queues"]:
        client("sqs").set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": policy})


# ---- DynamoDB
def _create_table(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource["Properties"])
    name = stack.resolver.physical_name(logical_id)
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if request["BillingMode"] == "PROVISIONED":
        request["ProvisionedThroughput"] = {k: int(v) for k, v in props["ProvisionedThroughput"].items()}
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(index_kind):
            request[index_kind] = [_index_definition(index) for index in props[index_kind]]
    stream = props.get("StreamSpecification")
    if stream:
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    ddb = client("dynamodb")
    description = ddb.create_table(**request)["TableDescription"]
    ttl = props.get("TimeToLiveSpecification")
    if ttl and _truthy(ttl.get("Enabled")):
        ddb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
        )
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr and _truthy(pitr.get("PointInTimeRecoveryEnabled")):
        ddb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    stack.names[logical_id] = name
    stack.resolver.set_attribute(logical_id, "Arn", description["TableArn"])
    if description.get("LatestStreamArn"):
        stack.stream_arns[logical_id] = description["LatestStreamArn"]
        stack.resolver.set_attribute(logical_id, "StreamArn", description["LatestStreamArn"])


def _index_definition(index: dict[str, Any]) -> dict[str, Any]:
    definition = {k: v for k, v in index.items() if k not in ("ContributorInsightsSpecification",)}
    if "ProvisionedThroughput" in definition:
        definition["ProvisionedThroughput"] = {k: int(v) for k, v in definition["ProvisionedThroughput"].items()}
    return definition


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


# ---- SSM (custom resource)
def _put_random_secure_parameter(
    stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any
) -> None:
    """What the template's ShopperTokenKeysFunction does on Create: a SecureString with a random url-safe key."""
    import secrets

    name = str(stack.resolve(resource["Properties"]["ParameterName"]))
    value = stack.options.get("secure_values", {}).get(logical_id) or secrets.token_urlsafe(32)
    client("ssm").put_parameter(Name=name, Value=value, Type="SecureString", Tier="Standard", Overwrite=True)
    stack.names[logical_id] = name
    stack.resolver.set_attribute(logical_id, "Ref", name)
    stack.resolver.set_attribute(logical_id, "ParameterName", name)


# ---- S3 Vectors (IndexBackend s3vectors)
def _create_vector_bucket(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource.get("Properties", {}) or {})
    name = stack.resolver.physical_name(logical_id)
    encryption = props.get("EncryptionConfiguration", {})
    kwargs = {"encryptionConfiguration": {"sseType": encryption["SseType"]}} if "SseType" in encryption else {}
    client("s3vectors").create_vector_bucket(vectorBucketName=name, **kwargs)
    stack.names[logical_id] = name


def _create_vector_index(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource["Properties"])
    name = stack.resolver.physical_name(logical_id)
    metadata = props.get("MetadataConfiguration", {})
    kwargs = {}
    if metadata.get("NonFilterableMetadataKeys"):
        kwargs["metadataConfiguration"] = {"nonFilterableMetadataKeys": list(metadata["NonFilterableMetadataKeys"])}
    client("s3vectors").create_index(
        vectorBucketArn=props["VectorBucketArn"],
        indexName=name,
        dataType=props["DataType"],
        dimension=int(props["Dimension"]),
        distanceMetric=props["DistanceMetric"],
        **kwargs,
    )
    stack.names[logical_id] = name


# ---- S3
def _create_bucket(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource.get("Properties", {}) or {})
    name = stack.resolver.physical_name(logical_id)
    s3 = client("s3")
    region = stack.resolver.region
    if region == "us-east-1":
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    if "VersioningConfiguration" in props and stack.options.get("versioning", True):
        s3.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]}
        )
    if "BucketEncryption" in props:
        rules = [_encryption_rule(rule) for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]]
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    if "PublicAccessBlockConfiguration" in props:
        block = {k: _truthy(v) for k, v in props["PublicAccessBlockConfiguration"].items()}
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)
    notifications = props.get("NotificationConfiguration")
    if notifications:
        s3.put_bucket_notification_configuration(
            Bucket=name, NotificationConfiguration=_notification_configuration(notifications)
        )
    stack.names[logical_id] = name


def _encryption_rule(cfn: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's ``ServerSideEncryptionByDefault`` is the API's ``ApplyServerSideEncryptionByDefault``."""
    rule: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": cfn["ServerSideEncryptionByDefault"]}
    if "BucketKeyEnabled" in cfn:
        rule["BucketKeyEnabled"] = _truthy(cfn["BucketKeyEnabled"])
    return rule


def _notification_configuration(cfn: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's spelling of bucket notifications (one event per entry) in the S3 API's (a list of events)."""
    api: dict[str, Any] = {}
    for cfn_key, api_key, target_key, api_target in (
        ("QueueConfigurations", "QueueConfigurations", "Queue", "QueueArn"),
        ("TopicConfigurations", "TopicConfigurations", "Topic", "TopicArn"),
        ("LambdaConfigurations", "LambdaFunctionConfigurations", "Function", "LambdaFunctionArn"),
    ):
        entries = []
        for entry in cfn.get(cfn_key, []):
            converted: dict[str, Any] = {api_target: entry[target_key], "Events": [entry["Event"]]}
            rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules")
            if rules:
                converted["Filter"] = {"Key": {"FilterRules": rules}}
            entries.append(converted)
        if entries:
            api[api_key] = entries
    return api


def _apply_bucket_policy(stack: ProvisionedStack, logical_id: str, resource: dict[str, Any], client: Any) -> None:
    props = stack.resolve(resource["Properties"])
    client("s3").put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))


# ---------------------------------------------------------------------------------------------------------- functions
@dataclass(frozen=True)
class FunctionSpec:
    """One function of the template, resolved: what a local dispatcher needs to run it the way Lambda would."""

    logical_id: str
    package_type: str  # "Zip" or "Image"
    code_uri: str | None  # functions/<name>/ for zip functions
    handler: str | None  # "app.lambda_handler"
    memory_size: int
    timeout: int
    environment: dict[str, str]
    events: dict[str, dict[str, Any]]  # event name -> {"Type": ..., "Properties": {...}} (resolved)


def function_specs(stack: ProvisionedStack) -> dict[str, FunctionSpec]:
    """Every ``AWS::Serverless::Function`` with Globals merged in and intrinsics resolved against ``stack``.

    Event properties that name other resources resolve to the provisioned values (queue ARN, table stream ARN).
    """
    resolver = stack.resolver
    globals_ = (resolver.template.get("Globals", {}) or {}).get("Function", {}) or {}
    specs: dict[str, FunctionSpec] = {}
    for logical_id, resource in resolver.resources.items():
        if resource["Type"] != "AWS::Serverless::Function" or not resolver.is_created(logical_id):
            continue
        props = resource.get("Properties", {}) or {}
        env = dict((globals_.get("Environment", {}) or {}).get("Variables", {}) or {})
        env.update((props.get("Environment", {}) or {}).get("Variables", {}) or {})
        specs[logical_id] = FunctionSpec(
            logical_id=logical_id,
            package_type=props.get("PackageType", "Zip"),
            code_uri=props.get("CodeUri"),
            handler=props.get("Handler", globals_.get("Handler")),
            memory_size=int(resolver.resolve(props.get("MemorySize", globals_.get("MemorySize", 128)))),
            timeout=int(resolver.resolve(props.get("Timeout", globals_.get("Timeout", 3)))),
            environment={k: str(v) for k, v in resolver.resolve(env).items()},
            events={name: resolver.resolve(event) for name, event in (props.get("Events", {}) or {}).items()},
        )
    return specs


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    api_key_required: bool


@dataclass(frozen=True)
class ApiSpec:
    """The REST API as the template declares it: routes, binary media types (``image/jpeg``), stage, CORS origin,
    and the ``GatewayResponses`` that shape API Gateway's own answers (bad key, too large, throttled)."""

    logical_id: str
    stage: str
    binary_media_types: list[str]
    routes: list[ApiRoute]
    cors_allow_origin: str | None
    gateway_responses: dict[str, Any] = field(default_factory=dict)


def api_spec(stack: ProvisionedStack, api_logical_id: str = "SearchApi") -> ApiSpec:
    """The routes of ``api_logical_id`` collected from the functions' ``Api`` events, resolved."""
    resolver = stack.resolver
    api = resolver.resolve(resolver.resources[api_logical_id].get("Properties", {}))
    key_required_default = bool((api.get("Auth") or {}).get("ApiKeyRequired", False))
    routes: list[ApiRoute] = []
    for spec in function_specs(stack).values():
        for event in spec.events.values():
            if event.get("Type") != "Api":
                continue
            props = event.get("Properties", {})
            if props.get("RestApiId") != resolver.ref(api_logical_id):
                continue
            auth = props.get("Auth") or {}
            routes.append(
                ApiRoute(
                    method=str(props["Method"]).upper(),
                    path=props["Path"],
                    api_key_required=bool(auth.get("ApiKeyRequired", key_required_default)),
                )
            )
    cors = api.get("Cors")
    origin = cors.get("AllowOrigin") if isinstance(cors, dict) else cors
    return ApiSpec(
        logical_id=api_logical_id,
        stage=str(api.get("StageName")),
        binary_media_types=[t.replace("~1", "/") for t in api.get("BinaryMediaTypes", [])],
        routes=sorted(routes, key=lambda r: (r.path, r.method)),
        cors_allow_origin=origin.strip("'") if isinstance(origin, str) else None,
        gateway_responses=dict(api.get("GatewayResponses") or {}),
    )
