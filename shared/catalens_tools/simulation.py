"""Simulated shoppers with hidden tastes: what does personal re-ranking buy, and what does it cost visually?

Used by ``catalens eval personalization``. Everything here is AWS-free and deterministic for a seed.

World
    A catalog of items with index-space vectors and product fields (``category``, ``brand``,
    ``colour``, ``price``); query sets with the fine class of each query photo (for visual top-1)
    and, for train-derived queries, the catalog items each must not retrieve. :func:`grocery_world` builds it
    from the Grocery Store Dataset; :func:`synthetic_world` from clustered random vectors.

Shoppers
    Each has one hidden taste: a preferred ``category``, ``brand`` or ``colour`` value, or a latent
    ``style`` — a hash-assigned eighth of the items that neither the photo nor the product fields reveal,
    the kind of taste only other shoppers' co-engagement (the collaborative signal) can find. They browse
    like people do: look up an item ("more like this"; 60 % of the time one they like), scan the
    plain visual results, view some (more often near the top), click, cart and buy items matching
    their taste far more often than others, and now and then dismiss one they dislike. Their events go
    through the real :class:`~catalens.profiles.ProfileUpdater` (in-memory store, co-occurrence
    counts fed by a background population of other shoppers).

Measurement
    For held-out query photos, the first stage (``IndexView.search``, 50 candidates) is re-ranked with
    the shopper's profile. NDCG@10 uses binary relevance "matches the hidden taste", its ideal
    ordering taken over the candidate pool (queries whose pool holds no matching item are left out);
    visual top-1 accuracy asks whether the first result has the query photo's fine class.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from catalens.cooccurrence import CooccurrenceCounts
from catalens.index.records import ItemRecord
from catalens.profiles.events import ShopperEvent
from catalens.profiles.profile import Profile
from catalens.profiles.updater import ProfileUpdater
from catalens.ranking import RerankParams, personal_signals, rerank
from catalens_tools.in_memory.profiles import InMemoryProfileStore

T0_MS = 1_730_000_000_000  # simulated time starts here (Oct 2024)
HOUR_MS = 3_600_000
TASTES = ("category", "brand", "colour", "style")
STYLES = 8  # latent styles: hash-assigned groups of items, in neither the photo nor the product fields
GROWERS = ("Grower-A", "Grower-B", "Grower-C", "Grower-D")
GROWER_PRICE_FACTOR = {"Grower-A": 1.3, "Grower-B": 1.0, "Grower-C": 0.85, "Grower-D": 1.1}
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white")
COLOUR_VERSION = 2  # bump when dominant_colour changes (the command caches colours under it)


def _unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (stable across runs and machines)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# ---------------------------------------------------------------------------------------------- world


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    fine: int  # fine class: ground truth of visual top-1
    fields: dict[str, Any]  # what the index knows (and the ranker sees)

    @property
    def style(self) -> str:
        """The item's latent style: only shoppers know it (the ranker can learn it only from co-engagement)."""
        return f"style-{int(_unit_hash('style', self.item_id) * STYLES)}"

    def attribute(self, name: str) -> Any:
        return self.style if name == "style" else self.fields.get(name)


@dataclass
class QuerySet:
    """Query photos: vectors, fine classes, and the catalog items each must not retrieve."""

    name: str
    vectors: np.ndarray
    fine: np.ndarray
    exclude: list[frozenset[str]]

    def __len__(self) -> int:
        return len(self.fine)


@dataclass
class Catalog:
    items: list[CatalogItem]
    vectors: np.ndarray  # unit-norm, index space
    position: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.position = {item.item_id: index for index, item in enumerate(self.items)}

    def lookup(self, item_id: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        index = self.position.get(item_id)
        return None if index is None else (self.vectors[index], self.items[index].fields)

    def view(self) -> Any:
        """The real query-side index over the catalog (delta records, exact search)."""
        from catalens.index.view import IndexView

        records = [
            ItemRecord(item.item_id, self.vectors[i], item.fields, f"catalog/{item.item_id}.jpg", "etag", "01")
            for i, item in enumerate(self.items)
        ]
        return IndexView(None, records)

    def describe(self) -> dict[str, Any]:
        counts = {name: Counter(item.attribute(name) for item in self.items) for name in TASTES}
        return {
            "items": len(self.items),
            "dim": int(self.vectors.shape[1]),
            **{f"{name}_values": len(count) for name, count in counts.items()},
            "colours": dict(sorted(counts["colour"].items())),
            "brands": dict(counts["brand"].most_common(12)),
        }


def grocery_fields(fine_name: str, coarse_name: str, group: str, item_id: str, colour: str) -> dict[str, Any]:
    """Product fields of a grocery photo, derived deterministically.

    - ``category`` = the coarse class (Apple, Milk, Pepper, ...).
    - ``brand`` = for packaged products the maker named first in the fine class (``Arla``, ``Oatly``,
      ``Alpro``, ...; real brands, visible on the pack); for fruit and vegetables one of four
      fictitious growers chosen by a hash of the item id (invisible in the photo, like a real grower).
    - ``colour`` = :func:`dominant_colour` of the photo.
    - ``price`` = a per-fine-class base price (log-uniform 0.5–6 from a hash of the class) × a brand
      factor (growers: fixed; makers: 0.8–1.4 from a hash) × ±10 % per item (hash), in cents.
    """
    if group == "Packages":
        brand = fine_name.split("-")[0]
        brand_factor = 0.8 + 0.6 * _unit_hash("brand", brand)
    else:
        brand = GROWERS[int(_unit_hash("grower", item_id) * len(GROWERS))]
        brand_factor = GROWER_PRICE_FACTOR[brand]
    base = math.exp(math.log(0.5) + (math.log(6.0) - math.log(0.5)) * _unit_hash("price", fine_name))
    price = base * brand_factor * (0.9 + 0.2 * _unit_hash("item", item_id))
    return {"title": fine_name, "category": coarse_name, "brand": brand, "colour": colour, "price": round(price, 2)}


def dominant_colour(image_bytes: bytes) -> str:
    """Named colour of a photo's centre: hue histogram of its saturated pixels, or "white" when few are.

    The central 60 % is scaled to 48×48; pixels with saturation > 0.25 and value > 0.2 vote for one of six
    hue ranges, weighted by saturation. Fewer than 8 % such pixels: "white" (packaging, pale produce).
    The ranges (red < 15° or ≥ 330°, orange < 35°, yellow < 55°, green < 170°, blue < 260°, purple) sit
    lower than textbook hues because the store photos have a warm cast: limes peak at 60–75°, lemons
    and bananas at 30–60°, carrots at 15–30° (measured on train photos; gray-world white balance
    over-corrects single-colour close-ups, so it is not used).
    """
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        box = (int(width * 0.2), int(height * 0.2), int(width * 0.8), int(height * 0.8))
        hsv = np.asarray(rgb.crop(box).resize((48, 48)).convert("HSV"), dtype=np.float32).reshape(-1, 3) / 255.0
    mask = (hsv[:, 1] > 0.25) & (hsv[:, 2] > 0.2)
    if mask.mean() < 0.08:
        return "white"
    hue, saturation = hsv[mask, 0] * 360, hsv[mask, 1]
    edges = [(0, 15, "red"), (15, 35, "orange"), (35, 55, "yellow"), (55, 170, "green"), (170, 260, "blue"),
             (260, 330, "purple"), (330, 361, "red")]  # fmt: skip
    votes: Counter[str] = Counter()
    for low, high, name in edges:
        votes[name] += float(saturation[(hue >= low) & (hue < high)].sum())
    return votes.most_common(1)[0][0]


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


SESSION_WINDOW = 10  # consecutive photo numbers of one fine class treated as one shooting session


def _photo_number(path: Path) -> int | None:
    digits = path.stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else None


def grocery_world(
    data_dir: Path | str, embed: Callable[[list[Path]], tuple[np.ndarray, list[str]]]
) -> tuple[Catalog, QuerySet, QuerySet]:
    """Catalog = iconic + train photos; queries: train photos to tune, val photos to report.

    A train query must not retrieve itself nor the photos of its shooting session: the same-class
    photos numbered within ``SESSION_WINDOW`` of it (consecutive shots of one shelf are near-copies;
    a shopper's photo has no such twin in the catalog, and val photos — other sessions — show it:
    their visual top-1 is far lower than leave-one-out train queries', and the top-1 budget must be
    tuned on queries that are as fragile). ``embed(paths) -> (vectors, colours)`` embeds the photos
    with the project's model and names their colour (:func:`dominant_colour`); the command caches it.
    """
    from catalens_tools.evaluation.grocery import load_grocery

    data = load_grocery(data_dir)
    catalog_images = sorted(data.catalog, key=lambda i: str(i.path))
    catalog_images += sorted(data.photos("train"), key=lambda i: str(i.path))
    val_images = sorted(data.photos("val"), key=lambda i: str(i.path))
    vectors, colours = embed([image.path for image in catalog_images + val_images])
    vectors = _unit(vectors)
    items = []
    for image, colour in zip(catalog_images, colours, strict=False):
        item_id = f"{image.role}-{image.path.stem}"
        fields = grocery_fields(image.fine_name, image.coarse_name, image.group, item_id, colour)
        items.append(CatalogItem(item_id, image.fine_id, fields))
    catalog = Catalog(items, vectors[: len(catalog_images)])

    sessions: dict[int, list[tuple[int, str]]] = {}
    for image, item in zip(catalog_images, items, strict=True):
        number = _photo_number(image.path)
        if image.role == "natural" and number is not None:
            sessions.setdefault(image.fine_id, []).append((number, item.item_id))
    train_rows = [i for i, image in enumerate(catalog_images) if image.role == "natural"]
    excludes = []
    for row in train_rows:
        image, item = catalog_images[row], items[row]
        number = _photo_number(image.path)
        twins = {
            other
            for n, other in sessions.get(image.fine_id, [])
            if number is not None and abs(n - number) <= SESSION_WINDOW
        }
        excludes.append(frozenset(twins | {item.item_id}))
    tune = QuerySet(
        f"train photos, without themselves and their session (±{SESSION_WINDOW} photos of the class)",
        catalog.vectors[train_rows],
        np.array([catalog.items[i].fine for i in train_rows]),
        excludes,
    )
    report = QuerySet(
        "val photos",
        vectors[len(catalog_images) :],
        np.array([image.fine_id for image in val_images]),
        [frozenset()] * len(val_images),
    )
    return catalog, tune, report


def synthetic_world(
    seed: int = 0, *, classes: int = 40, per_class: int = 30, queries_per_class: int = 4, dim: int = 64
) -> tuple[Catalog, QuerySet, QuerySet]:
    """Clustered random vectors standing in for photos (fast; for development and tests).

    Every third class is a "packaged product" with a maker brand; the others get growers by hash.
    Colour follows the class (with 20 % of items another colour) and tilts the vector a little, as in photos.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(classes, dim)))
    colour_directions = _unit(rng.normal(size=(len(COLOURS), dim)))
    items, vectors, query_vectors, query_fine = [], [], [], []
    for fine in range(classes):
        coarse = f"coarse-{fine // 3}"
        class_colour = COLOURS[fine % len(COLOURS)]
        for n in range(per_class + queries_per_class):
            colour = class_colour if rng.random() < 0.8 else COLOURS[rng.integers(len(COLOURS))]
            vector = centres[fine] + 0.55 * _unit(rng.normal(size=(1, dim)))[0]
            vector = vector + 0.25 * colour_directions[COLOURS.index(colour)]
            if n >= per_class:
                query_vectors.append(vector)
                query_fine.append(fine)
                continue
            item_id = f"syn-{fine}-{n}"
            group = "Packages" if fine % 3 == 0 else "Produce"
            fields = grocery_fields(f"Maker{fine % 5}-class{fine}", coarse, group, item_id, colour)
            items.append(CatalogItem(item_id, fine, fields))
            vectors.append(vector)
    catalog = Catalog(items, _unit(np.array(vectors)))
    tune_rows = list(range(0, len(items), 3))
    tune = QuerySet(
        "synthetic catalog items, leave-one-out",
        catalog.vectors[tune_rows],
        np.array([items[i].fine for i in tune_rows]),
        [frozenset({items[i].item_id}) for i in tune_rows],
    )
    report = QuerySet(
        "synthetic held-out", _unit(np.array(query_vectors)), np.array(query_fine), [frozenset()] * len(query_fine)
    )
    return catalog, tune, report


# ---------------------------------------------------------------------------------------------- shoppers


@dataclass(frozen=True)
class Shopper:
    user_id: str
    taste: str  # one of TASTES
    value: str

    def likes(self, item: CatalogItem) -> bool:
        return item.attribute(self.taste) == self.value


@dataclass(frozen=True)
class Behaviour:
    """How simulated shoppers act on a page of plain visual results."""

    page: int = 12
    like_query_share: float = 0.6  # sessions that start from an item the shopper likes
    view_first: float = 0.7  # chance to open the first result; ×0.9 per rank below
    click_liked: float = 0.55
    click_other: float = 0.07
    cart_liked: float = 0.4
    purchase_carted: float = 0.5
    dismiss_other: float = 0.12


def make_shoppers(
    catalog: Catalog, count: int, rng: random.Random, prefix: str, tastes: Sequence[str] = TASTES
) -> list[Shopper]:
    """Shoppers with the kinds of ``tastes`` in turn, each valued as a random catalog item is (popular values
    are common tastes)."""
    shoppers = []
    for n in range(count):
        taste = tastes[n % len(tastes)]
        while True:
            value = catalog.items[rng.randrange(len(catalog.items))].attribute(taste)
            if sum(item.attribute(taste) == value for item in catalog.items) >= 10:
                break
        shoppers.append(Shopper(f"{prefix}-{n:04d}", taste, str(value)))
    return shoppers


def browse_neighbours(catalog: Catalog, page: int) -> np.ndarray:
    """For every catalog item, its ``page`` visually nearest other items (what "more like this" shows)."""
    neighbours = np.empty((len(catalog.items), page), dtype=np.int64)
    for start in range(0, len(catalog.items), 512):
        scores = catalog.vectors[start : start + 512] @ catalog.vectors.T
        rows = np.arange(scores.shape[0])
        scores[rows, rows + start] = -np.inf
        top = np.argpartition(-scores, page, axis=1)[:, :page]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        neighbours[start : start + 512] = np.take_along_axis(top, order, axis=1)
    return neighbours


def simulate_events(
    shopper: Shopper,
    catalog: Catalog,
    neighbours: np.ndarray,
    count: int,
    rng: random.Random,
    behaviour: Behaviour = Behaviour(),
) -> list[ShopperEvent]:
    """``count`` events of one shopper, sessions hours apart, actions seconds apart."""
    liked = [i for i, item in enumerate(catalog.items) if shopper.likes(item)]
    events: list[ShopperEvent] = []
    now = T0_MS + rng.randrange(30 * 24) * HOUR_MS
    serial = itertools.count()

    def emit(kind: str, index: int, **extra: Any) -> None:
        nonlocal now
        now += rng.randrange(3_000, 40_000)
        item_id = catalog.items[index].item_id
        events.append(ShopperEvent(shopper.user_id, f"{shopper.user_id}-{next(serial)}", now, kind, item_id, **extra))

    while len(events) < count:
        now += rng.randrange(6, 48) * HOUR_MS
        start = (
            rng.choice(liked)
            if liked and rng.random() < behaviour.like_query_share
            else rng.randrange(len(catalog.items))
        )
        for rank, index in enumerate(neighbours[start][: behaviour.page]):
            if rng.random() >= behaviour.view_first * 0.9**rank:
                continue
            likes = shopper.likes(catalog.items[index])
            dwell = rng.randrange(4_000, 15_000) if likes else rng.randrange(800, 5_000)
            emit("view", int(index), dwell_ms=dwell)
            if rng.random() < (behaviour.click_liked if likes else behaviour.click_other):
                emit("click", int(index))
                if likes and rng.random() < behaviour.cart_liked:
                    emit("add_to_cart", int(index))
                    if rng.random() < behaviour.purchase_carted:
                        emit("purchase", int(index))
            elif not likes and rng.random() < behaviour.dismiss_other:
                emit("dismiss", int(index))
    return events[:count]


@dataclass
class Population:
    """Profiles and co-occurrence built by the real updater from simulated events."""

    catalog: Catalog
    counts: CooccurrenceCounts = field(default_factory=CooccurrenceCounts)
    store: InMemoryProfileStore = field(init=False)
    updater: ProfileUpdater = field(init=False)

    def __post_init__(self) -> None:
        self.store = InMemoryProfileStore(self.counts)
        self.updater = ProfileUpdater(self.store, self.catalog.lookup, cooccurrence=self.counts)

    def apply(self, events: Iterable[ShopperEvent]) -> Counter[str]:
        return Counter(self.updater.handle(event) for event in events)


# ---------------------------------------------------------------------------------------------- measurement


@dataclass
class Samples:
    """One row per (shopper, query): the candidate pool's visual scores, labels and personal signals."""

    shoppers: list[Shopper]
    profiles: list[Profile | None]
    now_ms: list[int]
    queries: list[int]
    pools: list[list[Any]]  # Hit lists, best visual first
    visual: np.ndarray  # [m, p]
    relevant: np.ndarray  # [m, p] bool: matches the hidden taste
    correct: np.ndarray  # [m, p] bool: same fine class as the query photo
    confidence: np.ndarray  # [m]; 0 for a cold shopper
    signals: dict[str, np.ndarray]  # name -> [m, p]

    def __len__(self) -> int:
        return len(self.queries)


SIGNALS = ("personal", "category", "brand", "price", "cooc")


def collect_samples(
    catalog: Catalog,
    view: Any,
    queries: QuerySet,
    shoppers: Sequence[Shopper],
    profiles: dict[str, Profile | None],
    now_ms: dict[str, int],
    *,
    per_shopper: int,
    pool: int,
    rng: random.Random,
    base: RerankParams,
) -> Samples:
    """Draw ``per_shopper`` queries per shopper, search the pool once per query, compute the signals."""
    cache: dict[int, list[Any]] = {}
    rows: list[tuple[Shopper, int]] = [(s, rng.randrange(len(queries))) for s in shoppers for _ in range(per_shopper)]
    m = len(rows)
    visual = np.zeros((m, pool))
    relevant = np.zeros((m, pool), dtype=bool)
    correct = np.zeros((m, pool), dtype=bool)
    confidence = np.zeros(m)
    signals = {name: np.zeros((m, pool)) for name in SIGNALS}
    pools = []
    for row, (shopper, query) in enumerate(rows):
        if query not in cache:
            exclude = queries.exclude[query]
            cache[query] = view.search(queries.vectors[query], pool, exclude=exclude, query_in_index_space=True)
        hits = cache[query]
        if len(hits) != pool:
            raise ValueError(f"the catalog is too small for a pool of {pool}")
        pools.append(hits)
        visual[row] = [hit.score for hit in hits]
        relevant[row] = [shopper.likes(catalog.items[catalog.position[hit.item_id]]) for hit in hits]
        correct[row] = [catalog.items[catalog.position[hit.item_id]].fine == queries.fine[query] for hit in hits]
        found = personal_signals(hits, profiles[shopper.user_id], params=base, now_ms=now_ms[shopper.user_id])
        if found is not None:
            confidence[row] = found[0].confidence
            for name in SIGNALS:
                signals[name][row] = getattr(found[0], name)
    return Samples(
        shoppers=[s for s, _ in rows],
        profiles=[profiles[s.user_id] for s, _ in rows],
        now_ms=[now_ms[s.user_id] for s, _ in rows],
        queries=[q for _, q in rows],
        pools=pools,
        visual=visual,
        relevant=relevant,
        correct=correct,
        confidence=confidence,
        signals=signals,
    )


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(relevant_in_order: np.ndarray, relevant_in_pool: np.ndarray, k: int = 10) -> np.ndarray:
    """Binary-relevance NDCG@k per row; ideal = all of the pool's relevant items first; NaN when there are none."""
    discounts = _discounts(k)
    dcg = (relevant_in_order[:, :k] * discounts).sum(axis=1)
    ideal_counts = np.minimum(relevant_in_pool.sum(axis=1), k)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[ideal_counts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal_counts > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)


def _metrics_from_order(samples: Samples, order: np.ndarray, k: int) -> dict[str, Any]:
    relevant = np.take_along_axis(samples.relevant, order, axis=1)
    ndcg = ndcg_at_k(relevant, samples.relevant, k)
    top1 = np.take_along_axis(samples.correct, order[:, :1], axis=1)[:, 0]
    by_taste = {}
    tastes = np.array([s.taste for s in samples.shoppers])
    for taste in TASTES:
        rows = tastes == taste
        by_taste[taste] = float(np.nanmean(ndcg[rows])) if np.isfinite(ndcg[rows]).any() else None
    return {
        f"ndcg@{k}": float(np.nanmean(ndcg)),
        "top1": float(top1.mean()),
        "ndcg_by_taste": by_taste,
        "ndcg_queries": int(np.isfinite(ndcg).sum()),
    }


def plain_order(samples: Samples) -> np.ndarray:
    return np.tile(np.arange(samples.visual.shape[1]), (len(samples), 1))


def estimated_order(samples: Samples, params: RerankParams) -> np.ndarray:
    """The order :func:`rerank` gives (without diversity), computed for all rows at once (used for tuning)."""
    signals = [samples.signals[name] for name in SIGNALS]
    weights = (
        params.personal_weight,
        params.category_weight,
        params.brand_weight,
        params.price_weight,
        params.cooc_weight,
    )
    raw = sum(w * s for w, s in zip(weights, signals, strict=True) if w)
    raw = samples.confidence[:, None] * raw if isinstance(raw, np.ndarray) else np.zeros_like(samples.visual)
    final = samples.visual + np.clip(raw, -params.max_boost, params.max_boost)
    return np.argsort(-final, axis=1, kind="stable")


def measured_order(samples: Samples, params: RerankParams) -> np.ndarray:
    """The order the real :func:`rerank` gives, row by row (the numbers we report)."""
    order = np.zeros_like(samples.visual, dtype=np.int64)
    for row, hits in enumerate(samples.pools):
        position = {hit.item_id: i for i, hit in enumerate(hits)}
        ranked = rerank(hits, samples.profiles[row], params=params, now_ms=samples.now_ms[row])
        order[row] = [position[hit.item_id] for hit in ranked]
    return order


def evaluate(samples: Samples, params: RerankParams | None, *, k: int = 10, exact: bool = True) -> dict[str, Any]:
    """Metrics of plain (``params`` None) or re-ranked results."""
    if params is None:
        order = plain_order(samples)
    else:
        order = measured_order(samples, params) if exact else estimated_order(samples, params)
    return _metrics_from_order(samples, order, k)


@dataclass(frozen=True)
class Grid:
    personal: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)
    category: tuple[float, ...] = (0.0, 0.01, 0.02, 0.04)
    brand: tuple[float, ...] = (0.0, 0.01, 0.02, 0.04)
    price: tuple[float, ...] = (0.0, 0.01)
    cooc: tuple[float, ...] = (0.0, 0.01, 0.02, 0.04)
    max_boost: tuple[float, ...] = (0.02, 0.03, 0.05, 0.08)

    def __iter__(self):
        yield from itertools.product(self.personal, self.category, self.brand, self.price, self.cooc, self.max_boost)


def tune(
    samples: Samples, base: RerankParams, *, max_top1_drop: float, grid: Grid = Grid(), k: int = 10
) -> dict[str, Any]:
    """Best weights by NDCG@k with a top-1 drop of at most ``max_top1_drop`` (a fraction); with and without cooc."""
    plain = _metrics_from_order(samples, plain_order(samples), k)
    best: dict[bool, tuple[float, RerankParams, dict[str, Any]]] = {}
    tried = 0
    for personal, category, brand, price, cooc, cap in grid:
        params = replace(base, personal_weight=personal, category_weight=category, brand_weight=brand,
                         price_weight=price, cooc_weight=cooc, max_boost=cap)  # fmt: skip
        metrics = _metrics_from_order(samples, estimated_order(samples, params), k)
        tried += 1
        if plain["top1"] - metrics["top1"] > max_top1_drop + 1e-12:
            continue
        uses_cooc = cooc > 0
        score = metrics[f"ndcg@{k}"]
        current = best.get(uses_cooc)
        if current is None or score > current[0] + 1e-12:
            best[uses_cooc] = (score, params, metrics)
    return {"plain": plain, "tried": tried, "best": best}
