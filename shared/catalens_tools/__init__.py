"""catalens tools: the CLI, the local stack and its web page, provisioning from the template, evaluation and
benchmarks, model building, the personalisation simulation and synthetic data.

Everything here imports the product package :mod:`catalens`; the product never imports this package (a test keeps
it so), so the Lambda layer ships ``catalens`` whole and nothing of this.
"""
