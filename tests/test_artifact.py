"""The export format module (handler/seqrec_artifact.py): metadata written and verified, sha256,
format versions refused by every reader (verify, the CLI archive.sh runs, the handler), the id map.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_artifact.py
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from handler_fixtures import load_handler, make_export

from handler.seqrec_artifact import (DATA_FILES, FORMAT_VERSION, INDEX_FILE, METADATA_FILE, ExportError, ItemIndex,
                                     read_metadata, sha256_file, verify_export, write_metadata)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("artifact"), num_items=40, version="3.1",
                       index_spec="hnsw:M=8,ef_construction=20")


@pytest.fixture
def copy(export, tmp_path):
    """A private copy of the export, to break."""
    return Path(shutil.copytree(export, tmp_path / "export"))


def set_meta(d: Path, **changes) -> None:
    """Edit metadata.json by hand (None deletes a key), as an old or foreign writer would leave it."""
    meta = json.loads((d / METADATA_FILE).read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (d / METADATA_FILE).write_text(json.dumps(meta))


def cli(d: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "handler.seqrec_artifact", "verify", str(d)],
                          capture_output=True, text=True, timeout=120)


def archive(d: Path, store: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([str(ROOT / "archive.sh"), str(d), "--out", str(store)],
                          capture_output=True, text=True, env=env, timeout=300)


# ---- metadata and verification
def test_export_writes_format_and_sha256_and_verifies(export):
    meta = verify_export(export)
    assert meta["format_version"] == FORMAT_VERSION == 3 and meta["model_version"] == "3.1"
    assert set(meta["files"]) == {*DATA_FILES, INDEX_FILE} and meta["index"]["kind"] == "hnsw"
    assert meta["index"]["entries"] == meta["index"]["live"] == int(pd.read_parquet(export / "items.parquet")["available"].sum())
    for name in meta["files"]:
        assert meta["files"][name] == sha256_file(export / name)
    assert sorted(p.name for p in export.iterdir()) == sorted([*DATA_FILES, INDEX_FILE, METADATA_FILE])  # no temp file left


def test_write_metadata_round_trip_replaces_format_and_sums(copy):
    old = read_metadata(copy)
    (copy / "items.parquet").write_bytes((copy / "items.parquet").read_bytes() + b"\0")  # files changed
    written = write_metadata(copy, {**old, "format_version": 1, "files": {"x": "y"}, "n": np.int64(7)})
    assert read_metadata(copy) == written and written["format_version"] == FORMAT_VERSION
    assert written["n"] == 7 and written["files"]["items.parquet"] == sha256_file(copy / "items.parquet")
    assert verify_export(copy)["model_version"] == "3.1"


@pytest.mark.parametrize("name", ["model.pt", INDEX_FILE])
def test_an_edited_byte_is_a_sha256_error(copy, name):
    raw = bytearray((copy / name).read_bytes())
    raw[len(raw) // 2] ^= 1
    (copy / name).write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=f"sha256 mismatch for {name}: metadata.json says [0-9a-f]{{64}}"):
        verify_export(copy)
    with pytest.raises(ExportError, match=f"sha256 mismatch for {name}"):  # the worker refuses to load it
        load_handler(copy)


def test_an_index_the_metadata_names_must_be_there_and_listed(copy):
    meta = read_metadata(copy)
    set_meta(copy, files={k: v for k, v in meta["files"].items() if k != INDEX_FILE})
    with pytest.raises(ExportError, match=r"lists no sha256 for \['candidates.faiss'\]"):
        verify_export(copy)
    (copy / INDEX_FILE).unlink()
    with pytest.raises(ExportError, match="metadata says index 'hnsw' but .* does not exist"):
        write_metadata(copy, meta)


def test_a_format_2_export_is_still_served_exactly(copy):
    """Format 2 had no index: served by the exact scan, not refused."""
    (copy / INDEX_FILE).unlink()
    meta = read_metadata(copy)
    set_meta(copy, format_version=2, index=None, files={k: v for k, v in meta["files"].items() if k != INDEX_FILE})
    assert verify_export(copy)["format_version"] == 2
    h, _ = load_handler(copy)
    assert h.index is None


@pytest.mark.parametrize("version, has", [(None, "format 1 (metadata.json has no format_version)"),
                                          (1, "format 1"), (99, "format 99"), ("3", "format '3'")])
def test_unknown_format_is_refused_with_what_to_do(copy, version, has):
    set_meta(copy, format_version=version)
    with pytest.raises(ExportError) as e:
        verify_export(copy)
    msg = str(e.value)
    assert f"is export {has}; this seqrec reads formats 2-3 only" in msg
    assert "python -m train" in msg and "python -m train.catalog" in msg
    assert ("newer seqrec" in msg) == (version == 99)


def test_missing_unlisted_and_bad_metadata(copy):
    (copy / "item_vectors.npy").unlink()
    with pytest.raises(ExportError, match="item_vectors.npy .listed in metadata.json. is missing"):
        verify_export(copy)
    set_meta(copy, files={"model.pt": "0" * 64})
    with pytest.raises(ExportError, match=r"lists no sha256 for \['item_vectors.npy', 'items.parquet', 'candidates.faiss'\]"):
        verify_export(copy)
    (copy / METADATA_FILE).write_text("{not json")
    with pytest.raises(ExportError, match="is not valid JSON"):
        verify_export(copy)
    (copy / METADATA_FILE).write_text("[1, 2]")
    with pytest.raises(ExportError, match="must hold a JSON object, got list"):
        verify_export(copy)
    (copy / METADATA_FILE).unlink()
    with pytest.raises(ExportError, match="metadata.json missing from"):
        verify_export(copy)


# ---- the command line archive.sh runs, and archive.sh itself
def test_cli_prints_the_version_or_one_line(export, copy):
    ok = cli(export)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "3.1\n", "")
    set_meta(copy, format_version=99)
    bad = cli(copy)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "export format 99" in bad.stderr
    set_meta(copy, format_version=FORMAT_VERSION, model_version=None)
    assert "has no model_version" in cli(copy).stderr


def test_archive_sh_refuses_a_bad_export_in_one_line_and_packs_a_good_one(export, copy, tmp_path):
    set_meta(copy, format_version=None)
    r = archive(copy, tmp_path / "store")
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "export format 1" in lines[0], r.stderr
    assert not (tmp_path / "store").exists()  # refused before anything is written

    r = archive(export, tmp_path / "store")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "store" / "seqrec_3.1.mar").is_file()


def test_the_archive_carries_exactly_the_handler_folder_and_the_export(export, tmp_path):
    """The .py files in the .mar are exactly those of handler/ (archive.sh packs the folder, so a
    new helper module ships without a list to update), beside the export's files."""
    assert archive(export, tmp_path / "store").returncode == 0
    with zipfile.ZipFile(tmp_path / "store" / "seqrec_3.1.mar") as mar:
        names = {n for n in mar.namelist() if not n.startswith("MAR-INF/")}
    handler = {f.name for f in (ROOT / "handler").iterdir() if f.is_file()}
    assert {n for n in names if n.endswith(".py")} == {n for n in handler if n.endswith(".py")}
    assert names == handler | {"model.pt", "item_vectors.npy", "items.parquet", INDEX_FILE, "metadata.json"}


# ---- the handler
def test_handler_refuses_an_unknown_format_at_load(copy):
    set_meta(copy, format_version=99)
    with pytest.raises(RuntimeError, match="export format 99; this seqrec reads formats 2-3 only. Re-export"):
        load_handler(copy)


# ---- the id map
def test_int_ids_round_trip_and_unknown_is_zero():
    index = ItemIndex.from_items(pd.Series([30, 10, 20, 10]))
    assert index.id_type == "int" and len(index) == 3
    assert index.encode(pd.Series([10, 30, 99])).tolist() == [1, 3, 0]
    assert index.lookup([20, None, 31, 10]).tolist() == [2, 0, 0, 1]
    out = index.decode([3, 1])
    assert out == [30, 10] and all(type(x) is int for x in out)  # JSON-ready, not numpy
    assert index.lookup([]).tolist() == []


def test_str_ids_round_trip_and_unknown_is_zero():
    index = ItemIndex.from_items(["sku-2", "10", "sku-1"])
    assert index.id_type == "str"
    assert index.decode([1, 2, 3]) == ["10", "sku-1", "sku-2"] and all(type(x) is str for x in index.decode([1]))
    assert index.encode(["sku-1", "nope"]).tolist() == [2, 0]
    assert index.lookup(["10", None, "sku-9"]).tolist() == [1, 0, 0]
    assert index.lookup(index.decode([3, 1, 2])).tolist() == [3, 1, 2]


def test_id_map_is_read_from_items_parquet_and_checked(export, copy):
    index = ItemIndex.read(export, verify_export(export))
    raw = pd.read_parquet(export / "items.parquet")["item_id"].tolist()
    assert index.decode(np.arange(1, len(raw) + 1)) == raw and index.lookup(raw[:3]).tolist() == [1, 2, 3]
    with pytest.raises(ExportError, match="says item_id_type 'str', items.parquet holds int ids"):
        ItemIndex.read(copy, {"item_id_type": "str"})
    with pytest.raises(ExportError, match="says 41 items, items.parquet has 40"):
        ItemIndex.read(copy, {"num_items": 41})
    pd.DataFrame({"item_id": [1, 1]}).to_parquet(copy / "items.parquet", index=False)
    with pytest.raises(ExportError, match="item ids must be unique"):
        ItemIndex.read(copy)
