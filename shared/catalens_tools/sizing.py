"""Lambda memory for a catalog size, from the per-item costs ``catalens bench index`` measures.

The template's memory parameters, their descriptions and the README's sizing table all quote these numbers;
``tests/unit/test_sizing.py`` keeps them in agreement. Update the constants from a new measurement, never the
quoted numbers alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalens.index.cache import DEFAULT_SWAP_HEADROOM

MB = 2**20


@dataclass(frozen=True)
class FunctionSizing:
    """``memory = base + per_item × items``, for one function."""

    name: str
    base_mb: int
    per_item_bytes: int
    source: str

    def largest_catalog(self, memory_mb: int) -> int:
        """The most items this function serves at ``memory_mb`` (0 when even the base does not fit)."""
        return max(0, (memory_mb - self.base_mb) * MB // self.per_item_bytes)

    def memory_mb(self, items: int) -> int:
        return self.base_mb + -(-items * self.per_item_bytes // MB)


# Search: runtime, Powertools, boto3 and the fp32 serving model after a few embeds hold 268 MB (VmRSS); 512 leaves
# room for one query's decode (< 32 MiB up to 2 MP) and the live deltas. The compact index holds 4,598 B per item
# (`catalens bench index --sizes 100000`: resident arrays 4,598.1 B/item with the PCA-320 first stage, the M-32 HNSW
# graph, 32-bit row numbers, the 2 B row scales and each row's record packed with a shared deflate dictionary, 68.5 B
# for records shaped like ingest's; less at 1M, where the fixed arrays weigh less) plus its stored lexical index, 262 B
# per item (LexicalIndex.resident_bytes at 100k items of synthetic grocery text: 32 postings an item at 8 B, float32
# lengths, a small vocabulary); a swap may add SWAP_HEADROOM more.
INDEX_BYTES_PER_ITEM = 4_598
TEXT_BYTES_PER_ITEM = 262
SEARCH = FunctionSizing(
    "search",
    512,
    round((INDEX_BYTES_PER_ITEM + TEXT_BYTES_PER_ITEM) * (1 + DEFAULT_SWAP_HEADROOM)),
    "bench index: resident bytes per item (vectors and words) x swap headroom",
)
# Profiles: no model; it loads whole versions (never the first stage alone; the lexical index too), and a swap may
# hold two.
PROFILES = FunctionSizing(
    "profiles",
    256,
    2 * (INDEX_BYTES_PER_ITEM + TEXT_BYTES_PER_ITEM),
    "bench index: resident bytes per item, two versions",
)
# Builder: a compaction holds the previous version, the first stage as float32 for the graph, the graph library's
# index (pynndescent's 2.0-2.2 KB per item when this was measured; faiss HNSW ~1.4 KB) and the new codes; the base is
# Python and the libraries' code. `catalens bench index --sizes 1000000`: a compaction of 1,000 changes into 1M items
# peaked at 9,885 MB (VmHWM) with pynndescent; with the HNSW graph 8,642 MB, and a first build of all 1M at once
# 9,299 MB (RssAnon). The larger figure stays.
BUILDER = FunctionSizing("builder", 450, 9_900, "bench index: compaction peak per item at 1M")

SEARCH_SETTINGS_MB = (2048, 4096, 6144, 10240)
BUILDER_SETTINGS_MB = (3008, 10240)
PROFILES_SETTINGS_MB = (512, 2048, 10240)

TABLE_SETTINGS_MB = (512, 2048, 3008, 6144, 10240)
_NOTES = {2048: " (search default)", 3008: " (builder default)", 10240: " (Lambda's largest)"}


def items(count: int) -> str:
    """A catalog size as the README and the template write it: 274k, 1.7M, or — for none."""
    if count <= 0:
        return "—"
    return f"{count / 1e6:.1f}M" if count >= 1_000_000 else f"{round(count / 1000)}k"


def markdown_table() -> str:
    """The README's table: the largest catalog each memory setting serves, per function."""
    lines = ["| memory (MB) | search | builder | profile stream |", "| --- | --- | --- | --- |"]
    for memory in TABLE_SETTINGS_MB:
        cells = [items(f.largest_catalog(memory)) for f in (SEARCH, BUILDER, PROFILES)]
        lines.append(f"| {memory}{_NOTES.get(memory, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
