"""evaluate_condition's generation metrics: flicker of every video and, with clip_weights (here the tiny
CLIP stand-in), CLIP-T of every video against the item's caption, through the shared scorer."""
from __future__ import annotations

import json

import clip_stand_in
import pytest
from test_scene_and_condition_eval import _cfg

from tools.datasets.synthetic_physics import SyntheticPhysics
from tools.scorers.clip import CLIPScorer
from utils.cli import main


@pytest.mark.slow  # builds the tiny CLIP and runs the engine (~10 s)
def test_clip_t_and_flicker_for_every_method(tmp_path):
    clip = clip_stand_in.tiny_clip(tmp_path, steps=1)  # untrained is enough: the values are checked, not ranked
    extra = f"clip_weights: {clip['pretrained']}\nclip_config_file: {clip['config_file']}\nclip_arch: {clip['arch']}\n"
    assert main("infer", ["--cfg", str(_cfg(tmp_path, extra))]) == 0
    m = json.loads((tmp_path / "out" / "demo_condition_class" / "metrics.json").read_text())
    gen = m["generation"]
    assert set(gen) == {"ground_truth", "guide_1", "guide_2", "unconditional"}
    for scores in gen.values():
        assert set(scores) == {"flicker", "clip_t"} and scores["clip_t"]["n"] == 3
        assert -1 <= scores["clip_t"]["mean"] <= 1 and 0 < scores["flicker"]["mean"] <= 1
    # the ground truth's CLIP-T is the scorer's on the dataset video and its caption
    cfg = m["settings"]
    ds = SyntheticPhysics(**{k: v for k, v in cfg["dataset"].items() if k != "type"})
    scorer = CLIPScorer(clip["arch"], clip["pretrained"], clip["config_file"])
    per_item = [scorer.clip_t(ds[i]["video"][:, :cfg["max_frames"]], ds[i]["caption"]) for i in range(3)]
    assert gen["ground_truth"]["clip_t"]["mean"] == pytest.approx(sum(per_item) / 3, abs=1e-5)


def test_missing_clip_weights_is_one_line(tmp_path, capsys):
    assert main("infer", ["--cfg", str(_cfg(tmp_path, f"clip_weights: {tmp_path / 'no.safetensors'}\n"))]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "clip_weights=" in err[0]
