"""A manifest run on the tiny model, in this process: completion, resume after an interruption,
a changed row, failing rows, and batching (``--batch-size 2`` = one at a time)."""

from __future__ import annotations

import json

import pytest

from instantstyle.batch import BatchOptions, run_batch
from instantstyle.images import read_metadata

from .conftest import assert_same_images, manifest_rows, options, results, write_jsonl


def test_twelve_rows_run_to_completion(baseline, batch_dir):
    out, summary, images = baseline
    assert (summary.rows, summary.generated, summary.failed, summary.pending) == (12, 12, 0, 0)
    lines = results(out)
    assert [line["row"] for line in lines] == list(range(12))  # manifest order
    assert {line["status"] for line in lines} == {"ok"} and len({line["id"] for line in lines}) == 12
    assert len(images) == 12
    for line, row in zip(lines, manifest_rows(), strict=True):  # every image carries its row's parameters
        params = read_metadata(out / line["output"])
        assert (params["prompt"], params["seed"], params["image_seed"], params["steps"]) == (
            row["prompt"],
            row["seed"],
            row["seed"],
            2,
        )
        assert (params["width"], params["height"]) == (row["width"], row["height"])
        assert params["style"] == [str(batch_dir / row["style"][0])]
        assert (
            line["device"] == "cpu"
            and line["seconds"] > 0
            and line["attempts"] == 1
            and line["error"] is None
        )
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [{k: v for k, v in t.items()} for t in table] == lines
    print(f"\nsingle process: {summary.images_per_second:.2f} images/s")


def test_interrupted_run_resumes_without_regenerating(baseline, batch_dir, batch_model, tmp_path):
    out = tmp_path / "out"
    seen = []

    def interrupt_after_five(record):
        seen.append(record)
        if len(seen) == 5:
            raise KeyboardInterrupt  # as Ctrl-C (or SIGTERM in the CLI) right after the 5th row

    opts = options(out)
    first = run_batch(batch_dir / "manifest.jsonl", opts, model=batch_model, on_record=interrupt_after_five)
    assert first.interrupted and (first.generated, first.pending) == (5, 7)
    assert [line["status"] for line in results(out)].count("pending") == 7
    finished = {
        line["output"]: (out / line["output"]).stat() for line in results(out) if line["status"] == "ok"
    }

    calls = []
    second = run_batch(batch_dir / "manifest.jsonl", opts, model=batch_model, on_record=calls.append)
    assert (second.skipped, second.generated, second.failed, second.pending) == (5, 7, 0, 0)
    assert len(calls) == 7 and not {c["output"] for c in calls} & set(finished)  # none of the 5 made again
    for name, stat in finished.items():  # ... nor rewritten
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert_same_images(out, baseline[2])  # bit for bit the uninterrupted run's

    # A changed row is redone (new id); an unchanged manifest does nothing.
    rows = manifest_rows()
    rows[4]["prompt"] = "a cat, watercolour"
    write_jsonl(batch_dir / "changed.jsonl", rows)
    third = run_batch(batch_dir / "changed.jsonl", opts, model=batch_model)
    assert (third.skipped, third.generated) == (11, 1)
    fourth = run_batch(batch_dir / "changed.jsonl", opts, model=batch_model)
    assert (fourth.skipped, fourth.generated, fourth.images) == (12, 0, 0)


def test_failing_rows_are_recorded_and_the_others_finish(batch_dir, batch_model, tmp_path):
    rows = manifest_rows()[:2] + [
        {"prompt": "a cat", "style": ["refs/corrupt.png"], "steps": 2, "seed": 1},
        {
            "prompt": "a cat",
            "style": ["refs/red.png"],
            "steps": 2,
            "seed": 1,
            "blocks": "up_blocks.0.attentions.7=1",
        },
        {"prompt": "a cat", "style": ["refs/red.png"], "steps": 0},
    ]
    manifest = write_jsonl(batch_dir / "failing.jsonl", rows)
    summary = run_batch(manifest, options(tmp_path, retries=1), model=batch_model)
    assert (summary.generated, summary.failed) == (2, 3)
    lines = {line["row"]: line for line in results(tmp_path)}
    assert [lines[i]["status"] for i in range(5)] == ["ok", "ok", "failed", "failed", "failed"]
    corrupt, block, steps = (lines[i]["error"] for i in (2, 3, 4))
    assert "corrupt.png" in corrupt and "truncated or corrupt" in corrupt
    assert "unknown block 'up_blocks.0.attentions.7'" in block and "up_blocks.0.attentions.1" in block
    assert steps.startswith("steps:")
    assert all("\n" not in e for e in (corrupt, block, steps))
    assert lines[2]["attempts"] == 2  # retried once; an invalid row is not retried
    assert lines[4]["attempts"] == 1 and lines[2]["output"] is None


def test_batch_size_two_equals_one_at_a_time(baseline, batch_dir, batch_model, tmp_path, monkeypatch):
    from instantstyle.batch import runner

    sizes = []
    real = runner.generate_call
    monkeypatch.setattr(
        runner, "generate_call", lambda model, reqs: sizes.append(len(reqs)) or real(model, reqs)
    )
    summary = run_batch(batch_dir / "manifest.jsonl", options(tmp_path, batch_size=2), model=batch_model)
    assert summary.generated == 12
    assert (
        sorted(sizes) == [1] * 4 + [2] * 4
    )  # each of the 4 prompt/style groups: seeds 1+2 together, 3 alone
    assert_same_images(tmp_path, baseline[2], tolerance=2)
    for line in results(tmp_path):  # each image still says its own row's seed
        row = manifest_rows()[line["row"]]
        params = read_metadata(tmp_path / line["output"])
        assert (params["seed"], params["image_seed"], params["num_images"], params["index"]) == (
            row["seed"],
            row["seed"],
            1,
            0,
        )


@pytest.mark.parametrize("engine", ["accelerate", "ray"])
def test_bad_options_are_one_line_errors(engine, tmp_path):
    from instantstyle.errors import InstantStyleError

    with pytest.raises(InstantStyleError, match="--batch-size 0"):
        BatchOptions(out=tmp_path, batch_size=0, engine=engine).check()
    with pytest.raises(InstantStyleError, match="--address"):
        BatchOptions(out=tmp_path, address="ray://x:10001").check()
    (tmp_path / "file").write_text(json.dumps({}))
    with pytest.raises(InstantStyleError, match="is a file"):
        BatchOptions(out=tmp_path / "file", engine=engine).check()
