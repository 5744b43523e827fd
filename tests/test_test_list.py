import json
import os

import numpy as np
import pytest

from utils.test_list import merge_results, parse_test_list, run_test_list, slugify


def _frames(item):
    return np.full((3, 8, 10, 3), (item.index * 40) % 256, np.uint8)


def test_parse_formats(tmp_path, shared_data):
    items = parse_test_list(["# c", "", "a dog|7", "a cat", "bad|x", "|3"], "text", rounds=2, base_seed=100)
    assert [(i.caption, i.seed, i.round) for i in items[:4]] == [("a dog", 7, 0), ("a dog", 8, 1),
                                                                 ("a cat", 100, 0), ("a cat", 101, 1)]
    assert items[4].error and "not an integer" in items[4].error and items[4].line_no == 5
    assert items[6].error and [i.index for i in items] == list(range(8))
    cls = parse_test_list(["3", "dog|5"], "class")
    assert (cls[0].label, cls[1].label, cls[1].seed) == ("3", "dog", 5)
    lst = tmp_path / "v.txt"
    lst.write_text("videos/realshort.mp4|||ctx\nnothing.mp4|||x\nvideos/realshort.mp4\n")
    vid = parse_test_list(str(lst), "video", data_dir=str(shared_data))
    assert vid[0].error is None and vid[0].path.endswith("realshort.mp4") and vid[0].caption == "ctx"
    assert "not found" in vid[1].error
    assert vid[2].error is None and vid[2].path == vid[0].path and vid[2].caption == ""  # caption optional
    with pytest.raises(ValueError, match="kind"):
        parse_test_list(["x"], "audio")


def test_slugify():
    assert slugify("a/b\\c\x00 d..e") == "a_b_c_d_e"
    assert slugify("ｆｕｌｌ　ｗｉｄｔｈ 猫") == "full_width_猫"
    assert slugify("///") == "item" and len(slugify("x" * 500)) == 60


def test_run_errors_skips_and_rerun(tmp_path):
    items = parse_test_list(["one", "two", "three|x", "four/../evil"], "text")

    def produce(item):
        if item.caption == "two":
            raise RuntimeError("out of memory")
        return {"frames": _frames(item), "note": "extra"}

    s = run_test_list(items, str(tmp_path), produce, fps=8, save_gif=True, save_grid=True, progress=False)
    assert (s["ok"], s["failed"], s["skipped"]) == (2, 2, 0)
    assert "out of memory" in s["reasons"][1] and "integer" in s["reasons"][2]
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".mp4")) == ["0000_one.mp4", "0003_four_evil.mp4"]
    assert os.path.exists(tmp_path / "0000_one.gif") and os.path.exists(tmp_path / "0000_one.png")
    recs = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert [r["status"] for r in recs] == ["ok", "error", "error", "ok"]
    assert recs[0]["note"] == "extra" and recs[0]["input"] == "one" and recs[0]["seed"] == 0
    # re-run: done items are skipped, the failed one is retried
    calls = []
    s2 = run_test_list(items, str(tmp_path), lambda it: calls.append(it.index) or _frames(it), progress=False)
    assert (s2["ok"], s2["failed"], s2["skipped"]) == (1, 1, 2) and calls == [1]
    s3 = run_test_list(items, str(tmp_path), _frames, overwrite=True, progress=False)
    assert s3["ok"] == 3
    recs = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert len(recs) == 4 and recs[1]["status"] == "ok"


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    import utils.video_io as vio

    def boom(tmp, frames, fps, q):
        open(tmp, "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(vio, "_write_mp4", boom)
    items = parse_test_list(["a"], "text")
    with pytest.raises(KeyboardInterrupt):
        run_test_list(items, str(tmp_path), _frames, progress=False)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".mp4")]
    monkeypatch.undo()
    s = run_test_list(items, str(tmp_path), _frames, progress=False)  # not skipped: no final file
    assert s["ok"] == 1


def test_sharding_two_ranks(tmp_path):
    items = parse_test_list([f"p{i}" for i in range(5)], "text")
    seen = []
    for r in range(2):
        s = run_test_list(items, str(tmp_path), lambda it: seen.append(it.index) or _frames(it),
                          rank=r, world_size=2, progress=False)
        assert s["total"] == (3 if r == 0 else 2)
    assert sorted(seen) == list(range(5))
    merge_results(str(tmp_path))
    recs = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert [r["index"] for r in recs] == list(range(5)) and all(r["status"] == "ok" for r in recs)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".mp4")]) == 5
