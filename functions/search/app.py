"""Search Lambda behind API Gateway (REST): each route hands the request to SearchService and returns its answer."""

import warnings

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from catalens.composition import build_search_service, load_profile_store, load_shopper_auth
from catalens.service import http
from catalens.service.requests import parse_item_id, parse_query_options, parse_search_request, parse_user_id
from catalens.service.telemetry import PowertoolsMetrics
from catalens.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = load_settings()
profiles = load_profile_store(settings, boto3.client("dynamodb"))
emf = PowertoolsMetrics(metrics)
service = build_search_service(settings, s3_client=boto3.client("s3"), profiles=profiles, metrics=emf)
shoppers = load_shopper_auth(settings, boto3.client("ssm"))  # who a request may personalise for or erase
app = http.RestResolver()
http.register_error_handlers(app, logger, metrics=emf)
copy_config_to_registered_loggers(source_logger=logger, include={"catalens"})
# Searches and errors are counted; health checks, item reads and the OpenAPI document have nothing to count.
warnings.filterwarnings("ignore", message="No application metrics to publish")


@app.post("/search")
def search() -> Response:
    raw = http.http_request(app)
    request = parse_search_request(raw, max_image_bytes=service.limits.max_bytes)
    return http.search_response(service.search(shoppers.search(request, raw.headers)))


@app.get("/items/<id>")
def get_item(id: str) -> Response:
    return http.json_response(service.get_item(parse_item_id(id)))


@app.get("/items/<id>/similar")
def similar_items(id: str) -> Response:
    raw = http.http_request(app)
    options = shoppers.options(parse_query_options(raw.query), raw.headers)
    return http.search_response(service.similar(parse_item_id(id), options))


@app.get("/health")
def health() -> Response:
    return http.json_response(service.health())


@app.get("/openapi.json")
def openapi() -> Response:
    return http.openapi_response(app.current_event.raw_event)


@app.delete("/users/<id>/profile")
def erase_profile(id: str) -> Response:
    user_id = shoppers.erasable(parse_user_id(id), http.http_request(app).headers)
    return http.json_response(service.forget_user(user_id))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return app.resolve(event, context)
