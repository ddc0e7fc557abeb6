"""Application services the Lambda handlers call: ingest, search and its routes, the profile stream, the builder.

Handlers in ``functions/`` translate events into calls on these services (built by :mod:`catalens.composition`);
the services compose the core (imaging, embedder, index, ranking) through the ports of :mod:`catalens.ports`, so
they run the same under moto, in the local stack and on Lambda.
"""
