"""Sub-commands of the ``catalens`` CLI.

Each module here defines ``register(subparsers)``; :mod:`catalens_tools.cli` discovers them. A module
imports its heavy dependencies (onnx, pynndescent, boto3) inside its run function so that
``catalens --help`` stays instant.
"""
