"""``catalens token --user ID``: sign a shopper token, as a shop's backend does, for trying the API by hand.

Locally the key is the local stack's (``<data dir>/shopper-token-key``, the value it puts into its SecureString
parameter); with ``--stack`` it is the deployed stack's parameter (output ``ShopperTokenParameterName``), read with
the caller's AWS credentials. Prints the token alone, for ``curl -H "X-Shopper-Token: $(catalens token --user alice)"``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from catalens.errors import CatalensError
from catalens.service.shopper_tokens import DEFAULT_TTL_SECONDS, HEADER, MAX_TTL_SECONDS, mint


class TokenCommandError(CatalensError):
    code = "token_failed"


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("token", help=f"sign a shopper token ({HEADER}) for a user, as the shop's backend would")
    parser.add_argument("--user", required=True, help="the shopper's user id")
    parser.add_argument(
        "--ttl", type=int, default=DEFAULT_TTL_SECONDS, help=f"seconds until it expires (at most {MAX_TTL_SECONDS})"
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".catalens"), help="the local stack's data dir")
    parser.add_argument("--stack", default=None, help="a deployed stack's name: sign with its parameter's key")
    parser.add_argument("--region", default=None, help="AWS region (with --stack)")
    parser.add_argument("--profile", default=None, help="AWS named profile (with --stack)")
    parser.add_argument("--json", action="store_true", help="print {user_id, token, header, expires_at}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    secret = stack_key(args.stack, args.region, args.profile) if args.stack else local_key(args.data_dir)
    now = int(time.time())
    try:
        token = mint(args.user, secret, ttl_seconds=args.ttl, now=now)
    except ValueError as exc:
        raise TokenCommandError(str(exc)) from exc
    if args.json:
        print(json.dumps({"user_id": args.user, "token": token, "header": HEADER, "expires_at": now + args.ttl}))
    else:
        print(token)
    return 0


def local_key(data_dir: Path) -> str:
    from catalens_tools.local.stack import SHOPPER_TOKEN_KEY_FILE

    key_file = data_dir.expanduser() / SHOPPER_TOKEN_KEY_FILE
    if not key_file.is_file():
        raise TokenCommandError(f"no {key_file}: start the local stack first (catalens local --data-dir {data_dir})")
    return key_file.read_text().strip()


def stack_key(stack: str, region: str | None, profile: str | None) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from catalens.adapters.ssm import read_secure_parameter

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        described = session.client("cloudformation").describe_stacks(StackName=stack)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Stacks"][0].get("Outputs", [])}
        name = outputs.get("ShopperTokenParameterName")
        if not name:
            message = f"stack {stack!r} has no output ShopperTokenParameterName (deployed before shopper tokens?)"
            raise TokenCommandError(message)
        return read_secure_parameter(session.client("ssm"), name)
    except (BotoCoreError, ClientError) as exc:
        raise TokenCommandError(f"cannot read the shopper-token key of stack {stack!r}: {exc}") from exc
