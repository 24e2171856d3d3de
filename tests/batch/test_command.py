"""``instantstyle batch`` on the command line: failed rows give exit status 1 with one line on
stderr and every error in the summary; bad options are one-line errors (status 2)."""

from __future__ import annotations

import pytest

from instantstyle.cli import main

from .conftest import results, write_jsonl


def test_failed_rows_make_the_exit_status_say_so(batch_dir, tmp_path, capsys):
    rows = [
        {"prompt": "a cat", "style": ["refs/red.png"], "steps": 2, "seed": 1},
        {"prompt": "a cat", "style": ["refs/corrupt.png"], "steps": 2, "seed": 1},
        {
            "prompt": "a cat",
            "style": ["refs/red.png"],
            "steps": 2,
            "seed": 1,
            "blocks": "up_blocks.0.attention.1=1",
        },
    ]
    manifest = write_jsonl(batch_dir / "cli.jsonl", rows)
    args = ["batch", str(manifest), "--out", str(tmp_path), "--base", "tiny", "--device", "cpu", "--quiet"]
    code = main([*args, "--retries", "0"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines() == [
        f"instantstyle: error: 2 of 3 rows failed (their errors: {tmp_path}/results.jsonl); fix them and run the "
        "same command again"
    ]
    assert "3 rows: 1 generated, 0 already done, 2 failed" in out
    assert "failed: row 1" in out and "corrupt.png' is truncated or corrupt" in out
    assert "failed: row 2" in out and "unknown block 'up_blocks.0.attention.1'" in out
    assert [line["status"] for line in results(tmp_path)] == ["ok", "failed", "failed"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size 0: give 1 or more images per call"),
        (["--address", "ray://head:10001"], "--address is the Ray cluster's; add --engine ray"),
        (["--engine", "rya"], "did you mean 'ray'?"),
    ],
)
def test_bad_options_are_one_line_errors(extra, message, batch_dir, tmp_path, capsys):
    argv = ["batch", str(batch_dir / "manifest.jsonl"), "--out", str(tmp_path), "--base", "tiny", *extra]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (a bad choice) exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
