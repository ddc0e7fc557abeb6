"""Adapters: implementations of :mod:`catalens.ports` (the only place boto3 may be imported)."""
