"""The memory settings quoted in the template and the README follow the measured per-item costs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from catalens_tools import sizing

ROOT = Path(__file__).resolve().parents[2]


def _template_parameters() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)["Parameters"]


@pytest.mark.parametrize(
    ("parameter", "function"),
    [
        ("SearchMemorySize", sizing.SEARCH),
        ("BuilderMemorySize", sizing.BUILDER),
        ("ProfilesMemorySize", sizing.PROFILES),
    ],
)
def test_each_memory_parameter_quotes_what_the_formula_gives(parameter: str, function: sizing.FunctionSizing) -> None:
    description = _template_parameters()[parameter]["Description"]
    quoted = re.findall(r"(\d{3,5})(?: MB)? (?:serves|builds)? ?~([\d.]+[kM])", description)
    assert len(quoted) >= 3, description
    for memory, count in quoted:
        assert count == sizing.items(function.largest_catalog(int(memory))), (parameter, memory)
    assert f"MB = {function.base_mb} + " in description


def test_the_readme_table_is_the_formula() -> None:
    assert sizing.markdown_table() in (ROOT / "README.md").read_text()


def test_sizes_grow_with_memory_and_the_default_search_setting_serves_a_quarter_million() -> None:
    for function in (sizing.SEARCH, sizing.BUILDER, sizing.PROFILES):
        counts = [function.largest_catalog(m) for m in sizing.TABLE_SETTINGS_MB]
        assert counts == sorted(counts)
        assert function.memory_mb(function.largest_catalog(4096)) <= 4096
    assert sizing.SEARCH.largest_catalog(2048) > 250_000
    assert sizing.items(0) == "—"
    assert sizing.items(1_740_113) == "1.7M"
    assert sizing.items(274_754) == "275k"
