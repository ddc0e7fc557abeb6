"""The shopper-token signing keys, read from one SSM SecureString parameter (Powertools parameters, cached).

The template creates the parameter (standard tier: free, unlike a Secrets Manager secret) with a random key; the
search function may only ``ssm:GetParameter`` that one parameter. The value is read at init and then at most every
``max_age_seconds``, so a rotated value (see :mod:`catalens.service.shopper_tokens`) reaches warm functions within
minutes without a redeploy, at one free ``GetParameter`` per function instance per interval.
"""

from __future__ import annotations

from typing import Any

from catalens.service.shopper_tokens import ShopperKeysUnavailableError, SigningKeys

DEFAULT_MAX_AGE_SECONDS = 300


class SsmShopperKeys:
    """Callable returning the current :class:`SigningKeys` of parameter ``name`` (``ShopperAuth.keys``)."""

    def __init__(self, client: Any, name: str, *, max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS) -> None:
        from aws_lambda_powertools.utilities.parameters import SSMProvider

        self.name = name
        self.max_age_seconds = max_age_seconds
        self._provider = SSMProvider(boto3_client=client)
        self._parsed: tuple[str, SigningKeys] | None = None

    def __call__(self) -> SigningKeys:
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            value = self._provider.get(self.name, max_age=self.max_age_seconds, decrypt=True)
        except GetParameterError as exc:
            raise ShopperKeysUnavailableError(f"cannot read the shopper-token keys ({self.name}): {exc}") from exc
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if self._parsed is None or self._parsed[0] != text:
            try:
                self._parsed = (text, SigningKeys.parse(text))
            except ValueError as exc:
                raise ShopperKeysUnavailableError(f"the shopper-token keys in {self.name} are unusable: {exc}") from exc
        return self._parsed[1]


def read_secure_parameter(client: Any, name: str) -> str:
    """One SecureString's value, decrypted (tools: ``catalens token``, ``catalens smoke``)."""
    return str(client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
