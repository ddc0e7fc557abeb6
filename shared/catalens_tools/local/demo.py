"""The demo catalog: product photos made from scikit-image's bundled public-domain/CC0 photos, with sidecar fields.

scikit-image ships a handful of photos inside its wheel (see the docstrings of ``skimage.data``: coffee and chelsea
CC0 by their photographers, astronaut and hubble_deep_field NASA public domain, rocket SpaceX public domain, brick /
grass / gravel CC0 textures, camera CC0, coins "no known copyright restrictions"). Each becomes a few "products" —
crops, a mirror image and colour editions — so "more like this", filters and personal re-ranking have something to
work with. Nothing is downloaded: the files are read from the installed package.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

from catalens.errors import CatalensError


class DemoCatalogError(CatalensError):
    code = "demo_catalog_unavailable"


@dataclass(frozen=True)
class DemoProduct:
    source: str  # file in skimage/data
    slug: str
    title: str
    category: str
    brands: tuple[str, ...]
    base_price: float
    licence: str


PRODUCTS = (
    DemoProduct("coffee.png", "espresso-cup", "Espresso cup", "kitchen", ("Bean & Co", "Crema"), 14.0, "CC0"),
    DemoProduct("chelsea.png", "tabby-print", "Tabby cat print", "posters", ("Whisker", "Pawprint"), 24.0, "CC0"),
    DemoProduct("astronaut.png", "astronaut-poster", "Astronaut poster", "posters", ("Orbit", "Apollo"), 29.0, "PD"),
    DemoProduct("rocket.jpg", "rocket-model", "Rocket launch print", "posters", ("Orbit", "Falcon"), 19.0, "PD"),
    DemoProduct("motorcycle_left.png", "motorbike", "Motorbike", "vehicles", ("Moto", "Roadster"), 4900.0, "BSD"),
    DemoProduct("hubble_deep_field.jpg", "deep-field", "Deep field canvas", "posters", ("Orbit",), 39.0, "PD"),
    DemoProduct("brick.png", "brick-tile", "Brick wall tile", "home", ("Stoneworks", "Terra"), 32.0, "CC0"),
    DemoProduct("grass.png", "turf-roll", "Turf roll", "garden", ("Greenfield", "Terra"), 18.0, "CC0"),
    DemoProduct("gravel.png", "gravel-bag", "Gravel bag", "garden", ("Stoneworks",), 9.5, "CC0"),
    DemoProduct("camera.png", "camera-print", "Photographer print", "posters", ("Lens & Light",), 21.0, "CC0"),
    DemoProduct("coins.png", "coin-set", "Coin collection", "collectibles", ("Mint",), 45.0, "no known restrictions"),
)

EDITIONS = (  # (suffix, title suffix, colour, transform)
    ("classic", "", "natural", "full"),
    ("close-up", " — close-up", "natural", "zoom"),
    ("mirrored", " — mirrored", "natural", "mirror"),
    ("warm", " — warm edition", "warm", "warm"),
    ("cool", " — cool edition", "cool", "cool"),
)


def skimage_data_dir() -> Path:
    """scikit-image's bundled data folder, found without importing scikit-image (its import is slow)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DemoCatalogError("the demo catalog needs scikit-image (run `make setup`), or pass --catalog DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def make_demo_catalog(out: Path, *, seed: int = 7, side: int = 640) -> list[Path]:
    """Write the demo photos (JPEG) and their sidecars into ``out``; return the photo paths. Deterministic."""
    from PIL import Image, ImageOps

    data = skimage_data_dir()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written: list[Path] = []
    for product in PRODUCTS:
        source = data / product.source
        if not source.is_file():
            continue
        with Image.open(source) as opened:
            base = ImageOps.exif_transpose(opened).convert("RGB")
        for number, (suffix, title_suffix, colour, transform) in enumerate(EDITIONS, start=1):
            image = _edition(base, transform)
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            item_id = f"{product.slug}-{suffix}"
            photo = out / f"{item_id}.jpg"
            image.save(photo, "JPEG", quality=88)
            brand = product.brands[(number - 1) % len(product.brands)]
            price = round(product.base_price * rng.uniform(0.8, 1.4), 2)
            fields = {
                "title": product.title + title_suffix,
                "price": price,
                "currency": "EUR",
                "category": product.category,
                "brand": brand,
                "color": colour,
                "url": f"https://shop.example/products/{item_id}",
                "source": f"scikit-image {product.source} ({product.licence})",
            }
            photo.with_suffix(".json").write_text(json.dumps(fields, ensure_ascii=False, indent=1))
            written.append(photo)
    if not written:
        raise DemoCatalogError(f"no demo photos found in {data}; pass --catalog DIR")
    return written


def _edition(image, transform: str):
    from PIL import Image, ImageEnhance, ImageOps

    width, height = image.size
    if transform == "zoom":
        return image.crop((width // 6, height // 6, width - width // 6, height - height // 6))
    if transform == "mirror":
        return ImageOps.mirror(image)
    if transform in ("warm", "cool"):
        red, green, blue = image.split()
        if transform == "warm":
            red = red.point(lambda v: min(255, int(v * 1.18 + 10)))
            blue = blue.point(lambda v: int(v * 0.8))
        else:
            blue = blue.point(lambda v: min(255, int(v * 1.2 + 10)))
            red = red.point(lambda v: int(v * 0.8))
        return ImageEnhance.Color(Image.merge("RGB", (red, green, blue))).enhance(1.1)
    return image.copy()
