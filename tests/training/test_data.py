"""Data sources: folder, manifest, WebDataset shards; crop conditioning; bad data; resumable positions."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from instantstyle.errors import InstantStyleError
from instantstyle.training import data as data_mod

from .conftest import make_shapes


def _keys(stream, n):
    return [stream.next_usable(lambda r: r).key for _ in range(n)]


def test_folder_manifest_and_shards_give_the_same_samples(tmp_path):
    folder = make_shapes(tmp_path / "f", n=6)
    rows = [{"image": f"f/{i:03d}.png", "caption": (folder / f"{i:03d}.txt").read_text()} for i in range(6)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "m.csv").write_text(
        "image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows)
    )
    for shard in range(2):
        with tarfile.open(tmp_path / f"s-{shard:02d}.tar", "w") as tar:
            for i in range(shard * 3, shard * 3 + 3):
                for ext, payload in (
                    ("png", (folder / f"{i:03d}.png").read_bytes()),
                    ("txt", rows[i]["caption"].encode()),
                ):
                    info = tarfile.TarInfo(f"{i:03d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    captions = sorted(r["caption"] for r in rows)
    for spec in (folder, tmp_path / "m.jsonl", tmp_path / "m.csv", str(tmp_path / "s-{00..01}.tar")):
        source = data_mod.open_source(str(spec))
        stream = data_mod.SampleStream(source, 32, seed=1)
        got = [stream.next_usable(lambda r: data_mod.decode(r, 32)) for _ in range(6)]
        assert sorted(s.caption for s in got) == captions, spec
        assert all(s.pixels.shape == (3, 32, 32) for s in got)


def test_centre_crop_records_sdxl_conditioning():
    im = Image.new("RGB", (120, 60))
    out, original, crop = data_mod.center_crop(im, 32)
    assert out.size == (32, 32) and original == (60, 120) and crop == (0, 16)
    s = data_mod.Sample("k", "c", "d", out, data_mod.to_tensor(out), original, crop)
    assert s.time_ids(32) == [60, 120, 0, 16, 32, 32]
    t = data_mod.to_tensor(Image.new("RGB", (2, 2), (255, 0, 127)))
    assert t[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 127 / 127.5 - 1])


def test_epochs_shuffle_deterministically_and_split_between_processes(tmp_path):
    folder = make_shapes(tmp_path / "f", n=7)
    src = data_mod.open_source(str(folder))
    a = _keys(data_mod.SampleStream(src, 32, seed=4), 14)
    assert a == _keys(data_mod.SampleStream(src, 32, seed=4), 14)
    assert sorted(a[:7]) == sorted(a[7:]) and a[:7] != a[7:]  # each epoch: all samples, new order
    r0 = _keys(data_mod.SampleStream(src, 32, seed=4, rank=0, world=2), 3)
    r1 = _keys(data_mod.SampleStream(src, 32, seed=4, rank=1, world=2), 3)
    assert not set(r0) & set(r1)  # disjoint shares, 3 each (7 // 2)
    # position: stop after 5, resume in a new stream, get the same continuation
    s = data_mod.SampleStream(src, 32, seed=4)
    _keys(s, 5)
    t = data_mod.SampleStream(src, 32, seed=4)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert _keys(t, 6) == a[5:11]


def test_corrupt_image_and_missing_caption_are_skipped_and_counted(tmp_path):
    folder = make_shapes(tmp_path / "f", n=4)
    (folder / "001.png").write_bytes(b"not a png at all")
    (folder / "002.txt").unlink()
    source = data_mod.open_source(str(folder))
    assert source.stats.missing_caption == 1 and source.stats.examples["missing_caption"] == ["002.png"]
    messages = []
    stream = data_mod.SampleStream(source, 32, log=messages.append)
    got = [stream.next_usable(lambda r: data_mod.decode(r, 32)).key for _ in range(4)]
    assert "001.png" not in got and "002.png" not in got
    assert stream.stats.unreadable == 2  # seen once per epoch, two epochs
    assert any("001.png" in m and "unreadable" in m for m in messages)
    summary = stream.stats.summary()
    assert "missing or empty caption" in summary and "unreadable" in summary


def test_empty_or_unusable_data_stops_with_a_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InstantStyleError, match="no usable samples.*no images found"):
        data_mod.open_source(str(tmp_path / "empty"))
    only_images = tmp_path / "nocap"
    make_shapes(only_images, n=2)
    for t in only_images.glob("*.txt"):
        t.unlink()
    with pytest.raises(InstantStyleError, match="2 skipped for a missing or empty caption"):
        data_mod.open_source(str(only_images))
    broken = make_shapes(tmp_path / "broken", n=2)
    for p in broken.glob("*.png"):
        p.write_bytes(b"garbage")
    stream = data_mod.SampleStream(data_mod.open_source(str(broken)), 32)
    with pytest.raises(InstantStyleError, match="no usable sample.*2 skipped as unreadable"):
        stream.next_usable(lambda r: data_mod.decode(r, 32))
    with pytest.raises(InstantStyleError, match="does not exist"):
        data_mod.open_source(str(tmp_path / "nope"))
    with pytest.raises(InstantStyleError, match="shard"):
        data_mod.open_source(str(tmp_path / "x-{0..3}.tar"))


def test_cli_empty_folder_exits_2_before_training(tmp_path, capsys, tiny_paths):
    from instantstyle.cli import main

    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    rc = main(
        [
            "train-adapter",
            "--base",
            str(tiny_paths["base"]),
            "--image-encoder",
            str(tiny_paths["image_encoder"]),
            "--data",
            str(tmp_path / "empty"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("instantstyle: error: --data folder") and "nothing was trained" in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "adapter.safetensors").exists() and not (out / "checkpoints").exists()


def test_training_run_survives_bad_samples(tmp_path, tiny_paths):
    """A corrupt image and a missing caption inside a real run: skipped, counted, reported; training goes on."""
    from instantstyle.training import train_adapter

    folder = make_shapes(tmp_path / "f", n=5)
    (folder / "000.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (folder / "003.txt").unlink()
    msgs = []
    import instantstyle.training.adapter_trainer as at

    trainer = at.AdapterTrainer(
        at.make_config(
            base=str(tiny_paths["base"]),
            image_encoder=str(tiny_paths["image_encoder"]),
            data=str(folder),
            out=str(tmp_path / "out"),
            resolution=32,
            batch_size=2,
            max_steps=2,
            checkpoint_every=0,
        ),
        progress=False,
        log=msgs.append,
    )
    result = trainer.train()
    assert result.steps == 2 and result.data["missing_caption"] == 1 and result.data["unreadable"] >= 1
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["examples"]["unreadable"][0] == "000.png" and report["examples"]["missing_caption"] == [
        "003.png"
    ]
    assert any("skipped unreadable image 000.png" in m for m in msgs)
    del train_adapter
