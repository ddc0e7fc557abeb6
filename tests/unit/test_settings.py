"""Settings from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import pytest

from catalens.settings import Settings


def test_query_sampling_and_calibration_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.query_sample_rate, settings.query_calibration) == (0.25, True)
    assert Settings.from_env({"QUERY_SAMPLE_RATE": "", "QUERY_CALIBRATION": ""}) == settings


@pytest.mark.parametrize(("raw", "rate"), [("0", 0.0), ("1", 1.0), ("0.05", 0.05), (" 0.5 ", 0.5)])
def test_query_sample_rate_is_a_fraction(raw: str, rate: float) -> None:
    assert Settings.from_env({"QUERY_SAMPLE_RATE": raw}).query_sample_rate == rate


@pytest.mark.parametrize("raw", ["-0.1", "1.5", "nan", "inf", "a quarter"])
def test_a_query_sample_rate_outside_zero_to_one_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="QUERY_SAMPLE_RATE must be a number between 0 and 1"):
        Settings.from_env({"QUERY_SAMPLE_RATE": raw})


@pytest.mark.parametrize(("raw", "on"), [("true", True), ("False", False), ("0", False), ("on", True), ("no", False)])
def test_query_calibration_is_a_boolean(raw: str, on: bool) -> None:
    assert Settings.from_env({"QUERY_CALIBRATION": raw}).query_calibration is on


def test_a_query_calibration_that_is_not_a_boolean_names_the_variable() -> None:
    with pytest.raises(ValueError, match="QUERY_CALIBRATION must be true or false"):
        Settings.from_env({"QUERY_CALIBRATION": "sometimes"})


def test_shopper_token_settings_default_to_refusing_unsigned_user_ids() -> None:
    assert (Settings.from_env({}).shopper_token_parameter, Settings.from_env({}).trust_unsigned_user_ids) == ("", False)
    env = {"SHOPPER_TOKEN_PARAMETER": "/shop/shopper-token-keys", "TRUST_UNSIGNED_USER_IDS": "true"}
    assert (Settings.from_env(env).shopper_token_parameter, Settings.from_env(env).trust_unsigned_user_ids) == (
        "/shop/shopper-token-keys",
        True,
    )
    with pytest.raises(ValueError, match="TRUST_UNSIGNED_USER_IDS"):
        Settings.from_env({"TRUST_UNSIGNED_USER_IDS": "maybe"})


def test_the_index_backend_is_lambda_unless_s3vectors_is_named() -> None:
    assert Settings.from_env({}).index_backend == "lambda"
    env = {"INDEX_BACKEND": "s3vectors", "VECTOR_BUCKET": "vectors", "VECTOR_INDEX": "items"}
    settings = Settings.from_env(env)
    assert (settings.index_backend, settings.vector_bucket, settings.vector_index) == ("s3vectors", "vectors", "items")
    with pytest.raises(ValueError, match="INDEX_BACKEND must be one of lambda, s3vectors"):
        Settings.from_env({"INDEX_BACKEND": "faiss"})


@pytest.mark.parametrize(("raw", "candidates"), [("", 0), ("0", 0), ("1024", 1024), ("4096", 4096), ("1", 1)])
def test_search_candidates_default_to_the_index_and_take_a_pool_size(raw: str, candidates: int) -> None:
    assert Settings.from_env({"SEARCH_CANDIDATES": raw}).search_candidates == candidates


@pytest.mark.parametrize("raw", ["-1", "4097", "1e9"])
def test_search_candidates_outside_their_range_name_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="SEARCH_CANDIDATES must be"):
        Settings.from_env({"SEARCH_CANDIDATES": raw})


def test_the_search_candidates_setting_reaches_the_index_store() -> None:
    """0 leaves the index's own default; a value becomes the walk's pool of every view the store hands out."""
    from catalens.composition import index_store
    from catalens.index import SearchParams

    assert index_store(Settings(index_bucket="b"), s3_client=object()).search_params is None
    store = index_store(Settings(index_bucket="b", search_candidates=1024), s3_client=object())
    assert store.search_params == SearchParams(ef=1024, expand=64)  # a sixteenth of the pool per step
    assert index_store(Settings(search_candidates=100), object()).search_params == SearchParams(ef=100, expand=40)
