"""Shopper-photo augmentations: the product's :mod:`catalens.shopper_views`, re-exported for the evaluation tools.

Ingest makes the query-domain seed with them, so they live in the product; the self-check, the lever study and the
composites import them from here as before.
"""

from catalens.shopper_views import AugmentConfig, Product, augment, foreground_mask, shelf_background

__all__ = ["AugmentConfig", "Product", "augment", "foreground_mask", "shelf_background"]
