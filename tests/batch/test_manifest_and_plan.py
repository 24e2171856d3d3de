"""Manifests (JSONL, CSV, Parquet, product specs), row ids, the plan (shape order, shards, calls) and
the result log, on hand-made rows: no model runs here."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from instantstyle.batch import plan
from instantstyle.batch.ids import FileHashes, assign_ids
from instantstyle.batch.manifest import expand_product, read_manifest
from instantstyle.batch.results import ResultLog, is_finished, read_records
from instantstyle.errors import InstantStyleError

from .conftest import write_jsonl


@pytest.fixture
def refs(tmp_path):
    (tmp_path / "refs").mkdir()
    for name, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / "refs" / f"{name}.png")
    return tmp_path


def test_csv_parquet_and_jsonl_read_the_same_requests(refs):
    rows = [
        {"prompt": "a cat", "style": ["refs/a.png"], "seed": 3, "steps": 2, "scale": 0.8},
        {
            "prompt": "a dog, 2",
            "style": ["refs/a.png", "refs/b.png"],
            "style_weights": [0.7, 0.3],
            "steps": 2,
            "style_window": [0.0, 0.8],
        },
    ]
    write_jsonl(refs / "m.jsonl", rows)
    (refs / "m.csv").write_text(
        "prompt,style,seed,steps,scale,style_weights,style_window\n"
        "a cat,refs/a.png,3,2,0.8,,\n"
        '"a dog, 2","[""refs/a.png"", ""refs/b.png""]",,2,,"[0.7, 0.3]",0:0.8\n'
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = sorted({k for r in rows for k in r})  # every column in every row: a missing value is a null
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows]), refs / "m.parquet")
    reqs = {fmt: [r.request for r in read_manifest(refs / f"m.{fmt}")] for fmt in ("jsonl", "csv", "parquet")}
    assert reqs["jsonl"] == reqs["csv"] == reqs["parquet"]
    first, second = reqs["jsonl"]
    assert first.style == [str(refs / "refs/a.png")] and first.seed == 3 and first.scale == 0.8
    assert second.style_weights == [0.7, 0.3] and second.style_window == (0.0, 0.8)
    assert second.seed is not None  # derived from the row: a rerun draws the same picture
    assert read_manifest(refs / "m.jsonl")[1].request.seed == second.seed


def test_bad_manifests_and_rows(refs):
    (refs / "m.csv").write_text("promt,style\na cat,refs/a.png\n")
    with pytest.raises(InstantStyleError, match=r"unknown column 'promt' \(did you mean 'prompt'\?\)"):
        read_manifest(refs / "m.csv")
    with pytest.raises(InstantStyleError, match="unknown format '.txt'"):
        (refs / "m.txt").write_text("x")
        read_manifest(refs / "m.txt")
    with pytest.raises(InstantStyleError, match="does not exist"):
        read_manifest(refs / "missing.jsonl")
    (refs / "m.jsonl").write_text(
        '{"prompt": "ok", "style": ["refs/a.png"]}\n{not json\n\n[1]\n'
        '{"prompt": "x", "style": ["https://example.com/a.png"]}\n{"prompt": "x", "stpes": 2}\n'
    )
    rows = read_manifest(refs / "m.jsonl")
    assert rows[0].request is not None and len(rows) == 5
    errors = [r.error for r in rows[1:]]
    assert errors[0].startswith("line 2 is not JSON") and "not a JSON object" in errors[1]
    assert "is a URL" in errors[2] and "stpes" in errors[3]


def test_product_spec_expands_deterministically(refs):
    spec = {
        "defaults": {"steps": 2},
        "styles": ["refs/a.png", ["refs/a.png", "refs/b.png"]],
        "prompts": ["a cat", {"prompt": "a dog", "content_prompt": "a photo"}],
        "settings": [{"mode": "style"}, {"mode": "style+layout", "scale": 0.5}],
        "seeds": 2,
    }
    (refs / "p.json").write_text(json.dumps(spec))
    rows = read_manifest(refs / "p.json")
    assert len(rows) == 2 * 2 * 2 * 2 and all(r.request is not None for r in rows)
    keys = [(len(r.request.style), r.request.prompt, r.request.mode, r.request.seed) for r in rows]
    assert keys[:4] == [
        (1, "a cat", "style", 0),
        (1, "a cat", "style", 1),
        (1, "a cat", "style+layout", 0),
        (1, "a cat", "style+layout", 1),
    ]  # seeds innermost
    assert keys == [
        (len(r.request.style), r.request.prompt, r.request.mode, r.request.seed)
        for r in read_manifest(refs / "p.json")
    ]
    with pytest.raises(InstantStyleError, match="unknown key 'prompt'"):
        expand_product({"prompt": ["a"]})
    with pytest.raises(InstantStyleError, match="'scale' is set by 'settings' and by an earlier axis"):
        expand_product({"styles": [{"style": ["x.png"], "scale": 1.0}], "settings": [{"scale": 0.5}]})


def test_ids_follow_content_not_location(refs, tmp_path_factory):
    write_jsonl(
        refs / "m.jsonl",
        [
            {"prompt": "a cat", "style": ["refs/a.png"], "seed": 1},
            {"prompt": "a cat", "style": ["refs/b.png"], "seed": 1},
            {"prompt": "a cat", "style": ["refs/a.png"], "seed": 1, "steps": 30},
        ],
    )
    ids = [r.id for r in assign_ids(read_manifest(refs / "m.jsonl"), {"base": "tiny"})]
    assert len(set(ids)) == 2 and ids[0] == ids[2]  # steps 30 is the default: the same request
    moved = tmp_path_factory.mktemp("moved")
    shutil.copytree(refs, moved, dirs_exist_ok=True)
    assert [r.id for r in assign_ids(read_manifest(moved / "m.jsonl"), {"base": "tiny"})] == ids
    assert [r.id for r in assign_ids(read_manifest(refs / "m.jsonl"), {"base": "other"})][0] != ids[0]
    Image.new("RGB", (16, 16), (0, 200, 0)).save(moved / "refs" / "a.png")  # edited image: its rows change
    hashes = FileHashes(moved / "hashes.json")
    new = [r.id for r in assign_ids(read_manifest(moved / "m.jsonl"), {"base": "tiny"}, hashes)]
    assert new[0] != ids[0] and new[1] == ids[1]
    assert (moved / "hashes.json").is_file()


def _rows(refs, specs):
    rows = [
        {"prompt": p, "style": ["refs/a.png"], "seed": s, "width": w, "height": 64, "steps": 2}
        for p, s, w in specs
    ]
    return assign_ids(read_manifest(write_jsonl(refs / "m.jsonl", rows)), {})


def test_plan_orders_by_shape_shards_exactly_and_batches_by_request(refs):
    specs = [(p, s, w) for s in range(4) for w in (64, 128) for p in ("a", "b")]  # shapes interleaved
    rows = _rows(refs, specs)
    calls = plan.units(rows, batch_size=1)
    assert len(calls) == 16 and plan.shape_changes(calls) == 1  # each shape visited once
    parts = [plan.shard(rows, r, 3) for r in range(3)]
    assert sorted(len(p) for p in parts) == [5, 5, 6]
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in rows)  # each row exactly once
    assert [r.id for r in plan.shard(rows, 1, 3)] == [r.id for r in parts[1]]  # deterministic
    batched = plan.units(rows, batch_size=3)
    assert sorted(len(c) for c in batched) == [1, 1, 1, 1, 3, 3, 3, 3]  # 4 seeds per request: 3 + 1
    for call in batched:
        assert len({(r.request.prompt, r.request.width) for r in call}) == 1
        assert len({r.request.seed for r in call}) == len(call)
    assert plan.shape_changes(batched) == 3  # 64 px x3, 128 px x3, 64 px x1, 128 px x1


def test_result_log_survives_a_torn_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    log = ResultLog(tmp_path, "w")
    log.append({"id": "a", "status": "ok", "outputs": ["images/a.png"], "finished_at": "1"})
    log.close()
    with log.path.open("ab") as f:
        f.write(b'{"id": "b", "status": "o')  # killed mid-write
    log.append({"id": "c", "status": "failed", "outputs": [], "finished_at": "2"})
    log.close()
    records = read_records(tmp_path)
    assert sorted(records) == ["a", "c"]
    assert is_finished(records["a"], tmp_path) and not is_finished(records["c"], tmp_path)
    (tmp_path / "images" / "a.png").unlink()
    assert not is_finished(records["a"], tmp_path)  # a result whose image is gone is redone
