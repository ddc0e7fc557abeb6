"""Least privilege, checked on the TRANSFORMED template (what CloudFormation deploys after the SAM transform).

The transform runs locally (``aws-sam-translator``, no AWS call). Every IAM statement is resolved for one stack
name, so resources are concrete ARNs. Each function's grants must equal the table below: a new permission, a
wider resource or a ``*`` fails here until someone decides, in review, that the function really needs it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from catalens_tools.provision import (
    Resolver,
    TemplateError,
    dependency_order,
    load_template,
    transform_template,
)

STACK = "catalens"
# Actions that AWS does not scope to resources: "*" is the only resource they accept.
RESOURCE_WILDCARD_ONLY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
LOGS = {"logs:CreateLogStream", "logs:PutLogEvents"}
TRACING = RESOURCE_WILDCARD_ONLY
INGEST_QUEUE_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}  # the SQS poller's
STREAM_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    return transform_template(load_template())


@pytest.fixture(scope="module")
def resolver(transformed: dict[str, Any]) -> Resolver:
    return Resolver(transformed, stack_name=STACK)


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document["Statement"]
    return found if isinstance(found, list) else [found]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_of(transformed: dict[str, Any], function: str) -> str:
    role = transformed["Resources"][function]["Properties"]["Role"]
    assert set(role) == {"Fn::GetAtt"}, f"{function} must use one of the template's roles, got {role}"
    return role["Fn::GetAtt"][0]


def grants(transformed: dict[str, Any], resolver: Resolver, role: str) -> set[tuple[str, str, str]]:
    """(action, resource ARN, condition JSON) of every Allow statement of the role, resolved for the stack."""
    props = transformed["Resources"][role]["Properties"]
    assert not props.get("ManagedPolicyArns"), f"{role}: managed policies grant more than the function needs"
    found = set()
    for policy in props.get("Policies", []):
        for statement in statements(resolver.resolve(policy["PolicyDocument"])):
            assert statement["Effect"] == "Allow"
            assert "NotAction" not in statement
            assert "NotResource" not in statement
            condition = repr(sorted(statement.get("Condition", {}).items()))
            for action in as_list(statement["Action"]):
                for resource in as_list(statement["Resource"]):
                    found.add((action, resource, condition))
    return found


def lambda_functions(transformed: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in transformed["Resources"].items() if v["Type"] == "AWS::Lambda::Function")


def expected_grants(resolver: Resolver) -> dict[str, set[tuple[str, str, str]]]:
    """Every permission each function has, and why (see the template's statement ids)."""
    catalog = f"arn:aws:s3:::{resolver.physical_name('CatalogBucket')}"
    index = f"arn:aws:s3:::{resolver.physical_name('IndexBucket')}"
    index_objects = f"{index}/index/*"
    index_prefix = repr([("StringLike", {"s3:prefix": "index/*"})])
    no_condition = repr([])

    def arn(logical_id: str) -> str:
        return resolver.get_att(logical_id, "Arn")

    def allow(actions: set[str], resource: str, condition: str = no_condition) -> set[tuple[str, str, str]]:
        return {(action, resource, condition) for action in actions}

    def base(log_group: str) -> set[tuple[str, str, str]]:
        return allow(LOGS, arn(log_group)) | allow(TRACING, "*")

    list_index = allow({"s3:ListBucket"}, index, index_prefix)
    shopper_token_keys = f"arn:aws:ssm:{resolver.region}:{resolver.account_id}:parameter/{STACK}/shopper-token-keys"
    return {
        "IngestFunction": base("IngestLogGroup")
        | allow(INGEST_QUEUE_ACTIONS, arn("CatalogEventsQueue"))
        | allow({"s3:GetObject"}, f"{catalog}/*")
        | allow({"s3:ListBucket"}, catalog)
        | allow({"s3:GetObject", "s3:PutObject"}, index_objects)
        | allow({"s3:DeleteObject"}, f"{index}/index/ingest-errors/*")  # a photo that indexes clears its marker
        | list_index,
        "SearchFunction": base("SearchLogGroup")
        | allow({"s3:GetObject"}, index_objects)
        | allow({"s3:PutObject"}, f"{index}/index/queries/samples/*")  # query embeddings for the query domain
        | list_index
        | allow({"dynamodb:GetItem", "dynamodb:PutItem"}, arn("ProfilesTable"))
        | allow({"dynamodb:Query", "dynamodb:BatchWriteItem"}, arn("EventsTable"))
        | allow({"ssm:GetParameter"}, shopper_token_keys),  # verify shopper tokens: that one parameter, read only
        "ShopperTokenKeysFunction": base("ShopperTokenKeysLogGroup")  # the custom resource
        | allow({"ssm:PutParameter", "ssm:DeleteParameter"}, shopper_token_keys),
        "ProfilesFunction": base("ProfilesLogGroup")
        | allow(STREAM_ACTIONS, f"{arn('EventsTable')}/stream/*")
        | allow({"dynamodb:GetItem", "dynamodb:PutItem"}, arn("ProfilesTable"))
        | allow({"dynamodb:UpdateItem", "dynamodb:Query"}, arn("CooccurrenceTable"))
        | allow({"s3:GetObject"}, index_objects)
        | list_index
        | allow({"sqs:SendMessage"}, arn("ProfilesDeadLetterQueue")),
        "IndexBuilderFunction": base("BuilderLogGroup")
        | allow({"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}, index_objects)
        | list_index
        | allow({"sqs:SendMessage"}, arn("BuilderDeadLetterQueue")),
    }


def test_every_function_has_exactly_the_permissions_it_needs(transformed: dict, resolver: Resolver) -> None:
    expected = expected_grants(resolver)
    assert lambda_functions(transformed) == sorted(expected)
    for function, wanted in expected.items():
        actual = grants(transformed, resolver, role_of(transformed, function))
        assert actual - wanted == set(), f"{function} has permissions beyond its needs"
        assert wanted - actual == set(), f"{function} lacks permissions its code uses"


def test_no_iam_statement_uses_a_wildcard_action_or_an_unneeded_wildcard_resource(
    transformed: dict, resolver: Resolver
) -> None:
    for logical_id, resource in transformed["Resources"].items():
        if resource["Type"] not in ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            continue
        assert resource["Type"] == "AWS::IAM::Role", f"{logical_id}: policies belong inline in the function's role"
        for action, arn, _ in grants(transformed, resolver, logical_id):
            assert "*" not in action, f"{logical_id} allows the wildcard action {action}"
            if arn == "*":
                assert action in RESOURCE_WILDCARD_ONLY, f"{logical_id} allows {action} on every resource"
            else:
                assert arn.startswith("arn:aws:"), f"{logical_id}: {action} on {arn}"


def test_roles_can_be_assumed_by_lambda_only(transformed: dict) -> None:
    roles = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert roles
    for role in roles:
        (trust,) = statements(role["Properties"]["AssumeRolePolicyDocument"])
        assert trust == {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }


def test_object_permissions_on_the_index_stay_inside_the_prefix_the_functions_use(
    transformed: dict, resolver: Resolver
) -> None:
    index = f"arn:aws:s3:::{resolver.physical_name('IndexBucket')}"
    for function in lambda_functions(transformed):
        env = resolver.resolve(transformed["Resources"][function]["Properties"].get("Environment", {}).get("Variables"))
        for action, arn, _ in grants(transformed, resolver, role_of(transformed, function)):
            if arn.startswith(f"{index}/"):
                assert arn.startswith(f"{index}/{env['INDEX_PREFIX']}"), f"{function}: {action} on {arn}"
                assert arn.endswith("/*"), f"{function}: {action} on {arn}"


def test_nobody_writes_the_catalog_and_only_the_builder_deletes_index_versions_and_deltas(
    transformed: dict, resolver: Resolver
) -> None:
    catalog = f"arn:aws:s3:::{resolver.physical_name('CatalogBucket')}"
    index = f"arn:aws:s3:::{resolver.physical_name('IndexBucket')}"
    for function in lambda_functions(transformed):
        for action, arn, _ in grants(transformed, resolver, role_of(transformed, function)):
            if arn.startswith(catalog):
                assert action in {"s3:GetObject", "s3:ListBucket"}, f"{function}: {action} on the catalog"
            if action == "s3:DeleteObject" and function != "IndexBuilderFunction":
                assert arn == f"{index}/index/ingest-errors/*", f"{function} may delete {arn}"


def test_the_catalog_queue_takes_messages_from_the_catalog_bucket_only(transformed: dict, resolver: Resolver) -> None:
    policy = resolver.resolve(transformed["Resources"]["CatalogEventsQueuePolicy"]["Properties"])
    (allow,) = [s for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == f"arn:aws:s3:::{resolver.physical_name('CatalogBucket')}"
    assert allow["Condition"]["StringEquals"]["aws:SourceAccount"] == resolver.account_id


@pytest.mark.parametrize("bucket", ["CatalogBucket", "IndexBucket"])
def test_buckets_are_private_encrypted_versioned_and_tls_only(
    transformed: dict, resolver: Resolver, bucket: str
) -> None:
    resources = transformed["Resources"]
    props = resolver.resolve(resources[bucket]["Properties"])
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    encryption = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert encryption["SSEAlgorithm"] in ("AES256", "aws:kms")
    (policy,) = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    bucket_arn = f"arn:aws:s3:::{resolver.physical_name(bucket)}"
    (deny,) = statements(resolver.resolve(policy["Properties"]["PolicyDocument"]))  # no Allow: IAM roles grant access
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
    assert set(deny["Resource"]) == {bucket_arn, f"{bucket_arn}/*"}
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_functions_can_be_invoked_only_by_their_own_triggers(transformed: dict, resolver: Resolver) -> None:
    permissions = [r["Properties"] for r in transformed["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"]
    assert permissions
    api_id = resolver.ref("SearchApi")
    for permission in map(resolver.resolve, permissions):
        assert permission["Action"] == "lambda:InvokeFunction"
        assert permission["Principal"] in ("apigateway.amazonaws.com", "events.amazonaws.com")
        source = permission["SourceArn"]
        if permission["Principal"] == "apigateway.amazonaws.com":
            assert permission["FunctionName"] == resolver.ref("SearchFunction")
            assert source.startswith(f"arn:aws:execute-api:{resolver.region}:{resolver.account_id}:{api_id}/")
        else:
            assert permission["FunctionName"] == resolver.ref("IndexBuilderFunction")
            assert source.startswith(f"arn:aws:events:{resolver.region}:{resolver.account_id}:rule/")


def test_every_api_method_but_cors_preflight_needs_the_api_key(transformed: dict) -> None:
    api = transformed["Resources"]["SearchApi"]["Properties"]
    methods = [(path, verb, op) for path, ops in api["Body"]["paths"].items() for verb, op in ops.items()]
    assert {verb for _, verb, _ in methods} >= {"get", "post", "delete", "options"}
    for path, verb, operation in methods:
        if verb == "options":
            assert operation["x-amazon-apigateway-integration"]["type"] == "mock", path
        else:
            assert operation.get("security") == [{"api_key": []}], f"{verb.upper()} {path} is open"
    plan = transformed["Resources"]["SearchApiUsagePlan"]["Properties"]
    assert {"RateLimit", "BurstLimit"} <= set(plan["Throttle"])
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "SearchApi"}, "Stage": {"Ref": "SearchApiStage"}}]


def test_batch_sources_report_partial_failures_and_keep_failures(transformed: dict) -> None:
    resources = transformed["Resources"]
    mappings = {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::Lambda::EventSourceMapping"}
    assert set(mappings) == {"IngestFunctionCatalogEvents", "ProfilesFunctionShopperEvents"}
    for mapping in mappings.values():
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    stream = mappings["ProfilesFunctionShopperEvents"]
    assert stream["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["ProfilesDeadLetterQueue", "Arn"]}
    queue = transformed["Resources"]["CatalogEventsQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["IngestDeadLetterQueue", "Arn"]}


def test_the_transformed_template_has_no_circular_dependency(transformed: dict) -> None:
    resources = transformed["Resources"]
    assert len(dependency_order(resources, resources)) == len(resources)


def test_a_catalog_bucket_referenced_with_ref_in_the_queue_policy_would_be_circular() -> None:
    """The pitfall the template avoids by spelling the bucket name with !Sub: the check above must catch it."""
    template = copy.deepcopy(load_template())
    condition = template["Resources"]["CatalogEventsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    condition["Condition"]["ArnEquals"]["aws:SourceArn"] = {"Fn::GetAtt": ["CatalogBucket", "Arn"]}
    resources = transform_template(template)["Resources"]
    with pytest.raises(TemplateError, match="circular dependency"):
        dependency_order(resources, resources)


def test_search_writes_query_samples_only_where_the_store_keeps_them_and_they_expire_in_30_days(
    transformed: dict, resolver: Resolver
) -> None:
    from catalens.index.layout import QUERY_SAMPLES_DIR
    from catalens.index.query_domain_store import QUERY_SAMPLE_MAX_AGE_DAYS

    env = resolver.resolve(transformed["Resources"]["SearchFunction"]["Properties"]["Environment"]["Variables"])
    samples = env["INDEX_PREFIX"] + QUERY_SAMPLES_DIR
    index = f"arn:aws:s3:::{resolver.physical_name('IndexBucket')}"
    writes = {arn for action, arn, _ in grants(transformed, resolver, "SearchRole") if action == "s3:PutObject"}
    assert writes == {f"{index}/{samples}*"}

    bucket = resolver.resolve(transformed["Resources"]["IndexBucket"]["Properties"])
    rules = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == samples]
    assert [(r["Status"], r["ExpirationInDays"]) for r in rules] == [("Enabled", QUERY_SAMPLE_MAX_AGE_DAYS)]
    everything_else = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r not in rules]
    assert all("ExpirationInDays" not in r for r in everything_else)  # nothing else in the index ever expires


def test_search_reads_the_query_settings_from_the_template_parameters(transformed: dict, resolver: Resolver) -> None:
    from catalens.settings import Settings

    env = resolver.resolve(transformed["Resources"]["SearchFunction"]["Properties"]["Environment"]["Variables"])
    settings = Settings.from_env(env)
    parameters = transformed["Parameters"]
    assert settings.query_sample_rate == float(parameters["QuerySampleRate"]["Default"]) == 0.25
    assert settings.query_calibration is (parameters["QueryCalibration"]["Default"] == "true") is True
    assert settings.main_subject is (parameters["MainSubject"]["Default"] == "true") is Settings().main_subject
    assert settings.search_candidates == parameters["SearchCandidates"]["Default"] == 0  # the index's own default
    for logical_id in ("IngestFunction", "ProfilesFunction", "IndexBuilderFunction"):
        other = transformed["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
        assert "QUERY_SAMPLE_RATE" not in other  # only photo searches are sampled


def test_the_search_errors_alarm_watches_the_server_errors_the_handler_emits(transformed: dict) -> None:
    """The handler answers failures as JSON 5xx and never raises: Lambda's Errors stays 0 for them, so the alarm
    must read the function's own ServerErrors, under the namespace and service name the template gives it."""
    import logging

    from catalens.service import http
    from catalens.service.telemetry import RecordingMetrics

    app, metrics = http.RestResolver(), RecordingMetrics()
    http.register_error_handlers(app, logging.getLogger("test"), metrics=metrics)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    answer = app.resolve({"httpMethod": "GET", "path": "/boom", "requestContext": {}}, None)
    assert answer["statusCode"] == 500  # answered, not raised
    assert [(p.name, set(p.dimensions)) for p in metrics.points] == [("ServerErrors", {"code"})]

    globals_env = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    search_env = transformed["Resources"]["SearchFunction"]["Properties"]["Environment"]["Variables"]

    alarm = transformed["Resources"]["SearchErrorsAlarm"]["Properties"]
    (query,) = alarm["Metrics"]
    assert {"MetricName", "Namespace"}.isdisjoint(alarm)
    namespace, service = globals_env["POWERTOOLS_METRICS_NAMESPACE"], search_env["POWERTOOLS_SERVICE_NAME"]
    # Metrics Insights sums every error code (the code dimension varies); the service dimension picks search
    assert query["Expression"] == f"SELECT SUM(ServerErrors) FROM {namespace} WHERE service = '{service}'"
    assert (query["Period"], query["ReturnData"]) == (300, True)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]

    crashes = transformed["Resources"]["SearchCrashesAlarm"]["Properties"]  # timeouts and init failures still raise
    assert (crashes["Namespace"], crashes["MetricName"]) == ("AWS/Lambda", "Errors")
    assert crashes["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "SearchFunction"}}]


def test_shopper_tokens_are_verified_with_one_free_secure_parameter(transformed: dict, resolver: Resolver) -> None:
    """The key lives in an SSM SecureString (standard tier) the template creates; search reads it, trusting no bare
    user id unless the deployer says so; browsers may send the token header."""
    resources = transformed["Resources"]
    keys = resolver.resolve(resources["ShopperTokenKeys"]["Properties"])
    assert keys["ParameterName"] == f"/{STACK}/shopper-token-keys"
    assert keys["ServiceToken"] == resolver.get_att("ShopperTokenKeysFunction", "Arn")
    code = resources["ShopperTokenKeysFunction"]["Properties"]["Code"]["ZipFile"]
    for fragment in ('Type="SecureString"', 'Tier="Standard"', "secrets.token_urlsafe(32)"):
        assert fragment in code
    env = resolver.resolve(resources["SearchFunction"]["Properties"]["Environment"]["Variables"])
    assert env["SHOPPER_TOKEN_PARAMETER"] == keys["ParameterName"]
    assert env["TRUST_UNSIGNED_USER_IDS"] == "false"
    assert transformed["Parameters"]["TrustUnsignedUserIds"]["Default"] == "false"
    assert resolver.resolve(transformed["Outputs"]["ShopperTokenParameterName"]["Value"]) == keys["ParameterName"]
    preflight = resources["SearchApi"]["Properties"]["Body"]["paths"]["/search"]["options"]
    headers = preflight["x-amazon-apigateway-integration"]["responses"]["default"]["responseParameters"]
    assert "X-Shopper-Token" in headers["method.response.header.Access-Control-Allow-Headers"]


def test_with_s3_vectors_each_function_gets_only_the_vector_actions_it_calls(transformed: dict) -> None:
    resolver = Resolver(transformed, stack_name=STACK, parameters={"IndexBackend": "s3vectors"})
    bucket = resolver.physical_name("VectorBucket")
    index_arn = f"arn:aws:s3vectors:{resolver.region}:{resolver.account_id}:bucket/{bucket}/index/items"
    assert resolver.get_att("VectorIndex", "IndexArn") == index_arn
    vector_actions = {
        "IngestFunction": {  # QueryVectors: the near-duplicate check before a write
            "s3vectors:GetVectors",
            "s3vectors:PutVectors",
            "s3vectors:DeleteVectors",
            "s3vectors:QueryVectors",
        },
        "SearchFunction": {"s3vectors:QueryVectors", "s3vectors:GetVectors"},
        "ProfilesFunction": {"s3vectors:GetVectors"},
        "IndexBuilderFunction": {"s3vectors:ListVectors", "s3vectors:GetVectors"},
    }
    expected = expected_grants(resolver)
    for function, wanted in expected.items():
        actual = grants(transformed, resolver, role_of(transformed, function))
        extra = {(action, index_arn, repr([])) for action in vector_actions.get(function, set())}
        assert actual == wanted | extra, function
    variables = transformed["Resources"]["SearchFunction"]["Properties"]["Environment"]["Variables"]
    env = resolver.resolve(variables)
    assert (env["INDEX_BACKEND"], env["VECTOR_BUCKET"], env["VECTOR_INDEX"]) == ("s3vectors", bucket, "items")
    index = transformed["Resources"]["VectorIndex"]["Properties"]
    assert (resolver.resolve(index["Dimension"]), index["DistanceMetric"]) == ("3984", "cosine")
    assert index["MetadataConfiguration"]["NonFilterableMetadataKeys"] == ["_record"]


def test_the_default_backend_creates_no_vector_resources_and_grants_no_vector_action(transformed: dict) -> None:
    resolver = Resolver(transformed, stack_name=STACK)
    assert not resolver.is_created("VectorBucket")
    assert not resolver.is_created("VectorIndex")
    env = resolver.resolve(transformed["Resources"]["SearchFunction"]["Properties"]["Environment"]["Variables"])
    assert env["INDEX_BACKEND"] == "lambda"
    assert "VECTOR_BUCKET" not in env
