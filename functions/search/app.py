"""Search Lambda behind API Gateway (REST): the routes of catalens.service.api, each answered by SearchService."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths

from catalens.composition import build_search_api, build_search_service
from catalens.service.telemetry import PowertoolsMetrics
from catalens.settings import load_settings

logger, tracer, metrics = Logger(), Tracer(), Metrics()
settings = load_settings()
emf = PowertoolsMetrics(metrics)
service = build_search_service(settings, metrics=emf)
app = build_search_api(service, settings, logger=logger, metrics=emf)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return app.resolve(event, context)
