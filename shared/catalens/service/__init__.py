"""Application services the Lambda handlers call: ingest of catalog photos, and search.

Handlers in ``functions/`` translate events into calls on these services; the services compose the
core (imaging, embedder, index, ranking) through ports, so they run the same under moto, in the
local stack and on Lambda.
"""
