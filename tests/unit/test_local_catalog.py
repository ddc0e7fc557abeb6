"""Reading a merchant's catalog folder: photos, sidecar and CSV fields, one problem line per broken file."""

from __future__ import annotations

import email.header
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from catalens_tools.local.catalog import CatalogError, metadata_for, scan_catalog
from catalens_tools.local.uploader import ProgressBar, normalise_prefix


def jpeg(path: Path, colour: str = "red") -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue())
    return path


def test_sidecar_and_csv_fields_merge_with_the_sidecar_winning(tmp_path: Path) -> None:
    jpeg(tmp_path / "shoe.jpg")
    jpeg(tmp_path / "hat.jpg")
    (tmp_path / "shoe.json").write_text(json.dumps({"title": "Red shoe", "price": 20}))
    (tmp_path / "products.csv").write_text("file,title,brand\nshoe.jpg,Old title,Acme\nhat,Blue hat,\n")
    catalog = scan_catalog(tmp_path)
    fields = {photo.item_id: photo.fields for photo in catalog.photos}
    assert fields["shoe"] == {"title": "Red shoe", "price": 20, "brand": "Acme"}
    assert fields["hat"] == {"title": "Blue hat"}
    assert catalog.problems == []


def test_broken_files_become_one_problem_each_and_the_rest_still_load(tmp_path: Path) -> None:
    jpeg(tmp_path / "good.jpg")
    jpeg(tmp_path / "badjson.jpg")
    (tmp_path / "badjson.json").write_text("{not json")
    (tmp_path / "text.jpg").write_text("hello, I am not a photo")
    (tmp_path / "empty.png").write_bytes(b"")
    catalog = scan_catalog(tmp_path)
    assert [p.item_id for p in catalog.photos] == ["good"]
    problems = {problem.path.name: problem.message for problem in catalog.problems}
    assert set(problems) == {"badjson.jpg", "text.jpg", "empty.png"}
    assert "not valid JSON" in problems["badjson.jpg"]
    assert all("\n" not in str(problem) for problem in catalog.problems)


def test_missing_folder_and_csv_without_key_column_are_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        scan_catalog(tmp_path / "nope")
    (tmp_path / "products.csv").write_text("title,price\nA,1\n")
    with pytest.raises(CatalogError, match="key column"):
        scan_catalog(tmp_path)


def test_metadata_encodes_non_ascii_and_gives_up_on_nested_or_oversized_fields() -> None:
    metadata = metadata_for({"title": "Café crème", "price": 3.5, "tags": ["a", "b"], "organic": True})
    assert metadata is not None
    assert metadata["price"] == "3.5"
    assert metadata["tags"] == "a,b"
    assert metadata["organic"] == "true"
    assert metadata["title"].isascii()
    assert str(email.header.make_header(email.header.decode_header(metadata["title"]))) == "Café crème"
    assert metadata_for({"dims": {"w": 1}}) is None
    assert metadata_for({"description": "x" * 3000}) is None


def test_prefix_normalisation() -> None:
    assert normalise_prefix("catalog") == "catalog/"
    assert normalise_prefix("/catalog/") == "catalog/"
    assert normalise_prefix("") == ""


def test_progress_bar_on_a_pipe_prints_whole_lines() -> None:
    out = io.StringIO()
    bar = ProgressBar(2, 2000, stream=out)
    bar.advance(1000)
    bar.advance(1000, failed=True)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("uploading [")
    assert "2/2 photos" in lines[-1]
    assert "1 failed" in lines[-1]
