"""The vector index: snapshot format, numpy search, delta merge, and (in :mod:`.build`) the builder.

Importing this package (and everything but :mod:`catalens.index.build`) needs numpy alone, so the
query path never loads numba: pynndescent is imported only while a graph is being built.
"""

from catalens.index.records import Hit, ItemRecord, sequencer_key

__all__ = ["Hit", "ItemRecord", "sequencer_key"]
