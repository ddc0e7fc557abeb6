"""Run one handler invocation in a child process: ``python -m catalens_tools.local.invoke APP_PATH --out RESULT.json``.

The index builder is a container-image function on AWS (its graph library and 10 GB of memory); locally it runs
in its own process, so its imports and its memory never touch the process that answers searches. The event
comes on stdin; the result (or the error) goes to ``--out`` as JSON, because the handler's logs own stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from catalens_tools.local.runtime import LambdaContext, load_handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catalens_tools.local.invoke")
    parser.add_argument("app", type=Path)
    parser.add_argument("--handler", default="lambda_handler")
    parser.add_argument("--name", default="function")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    event = json.loads(sys.stdin.read() or "{}")
    try:
        handler = load_handler(args.app, f"catalens_local_fn_{args.name}", args.handler)
        context = LambdaContext(args.name, memory_limit_in_mb=args.memory, timeout_seconds=args.timeout)
        result = handler(event, context)
        args.out.write_text(json.dumps({"ok": True, "result": result}, default=str))
        return 0
    except Exception as exc:
        args.out.write_text(
            json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
