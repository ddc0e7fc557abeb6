"""``catalens local``: the whole system on this machine (AWS emulator, real handlers, web page) until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser(
        "local",
        help="run the whole system locally (moto + handlers + web page); Ctrl-C stops it",
        description=__doc__,
    )
    parser.add_argument("--catalog", type=Path, default=None, help="load this folder of photos (default: demo catalog)")
    parser.add_argument("--fresh", action="store_true", help="forget the saved state and load the catalog again")
    parser.add_argument("--port", type=int, default=8080, help="port of the web page and API (default 8080)")
    parser.add_argument("--moto-port", type=int, default=4566, help="port of the AWS emulator (default 4566)")
    parser.add_argument("--data-dir", type=Path, default=Path(".catalens"), help="where state is kept (.catalens)")
    parser.add_argument("--no-catalog", action="store_true", help="start with an empty catalog")
    parser.add_argument(
        "--compact-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="builder schedule (default: the template's)",
    )
    parser.add_argument(
        "--index-backend",
        choices=("lambda", "s3vectors"),
        default="lambda",
        help="the template's IndexBackend: lambda (default) or s3vectors (moto's S3 Vectors); switching needs --fresh",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="handlers' logs (INFO) in the terminal instead of .catalens/logs/"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from catalens_tools.local.stack import LocalConfig, LocalStack

    config = LocalConfig(
        data_dir=args.data_dir,
        port=args.port,
        moto_port=args.moto_port,
        catalog=args.catalog,
        fresh=args.fresh,
        load_catalog=not args.no_catalog,
        compaction_interval_seconds=args.compact_every,
        log_level="INFO" if args.verbose else "WARNING",
        capture_function_output=not args.verbose,
        index_backend=args.index_backend,
    )
    if args.catalog is not None and not args.catalog.expanduser().is_dir():
        print(f"catalens local: catalog folder {args.catalog} does not exist", file=sys.stderr)
        return 2
    stop = threading.Event()
    first_interrupt: list[float] = []

    def on_signal(signum: int, frame: object) -> None:
        # A second Ctrl-C (not a duplicate delivery of the first, nor a SIGTERM) means "quit now".
        if signum == signal.SIGINT:
            if first_interrupt and time.monotonic() - first_interrupt[0] > 1.0:
                print("\ncatalens local: stopping now, without saving", file=sys.stderr)
                os._exit(130)
            first_interrupt.append(time.monotonic())
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = LocalStack(config)
    print("catalens local: starting (AWS emulator, template resources, handlers)…", file=sys.stderr)
    try:
        info = stack.start()
    except KeyboardInterrupt:
        stack.stop(save=False)
        return 130
    if stop.is_set():
        stack.stop()
        return 0
    print(
        "\n"
        f"  catalens is running — open {info.web_url} and drop a photo on the page\n"
        f"  API      {info.api_url}   (header x-api-key: {info.api_key})\n"
        f"  AWS      {info.endpoint_url}   (moto; catalog bucket {info.catalog_bucket})\n"
        f"  upload   catalens upload DIR --bucket {info.catalog_bucket} "
        + (f"--prefix {info.catalog_prefix} " if info.catalog_prefix else "")
        + f"--endpoint-url {info.endpoint_url}\n"
        f"  data     {stack.data_dir} (kept between runs; --fresh starts over)\n"
        "  Ctrl-C stops it.\n",
        file=sys.stderr,
        flush=True,
    )
    try:
        stop.wait()
    finally:
        print("catalens local: stopping…", file=sys.stderr)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("catalens local: stopped", file=sys.stderr)
    return 0
