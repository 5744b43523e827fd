"""Regenerate the demo inputs under data/demo/ (deterministic; seeds never used in training).

    python -m scripts.make_demo_data            # v1: 32x32 videos, test / generate lists
    python -m scripts.make_demo_data --v2       # v2 (data/demo/v2/): 64x64 videos of train_v2.yaml's
                                                # generator with captions, text / class lists, class prompts
    python -m scripts.make_demo_data --atari    # data/atari/: held-out Pong starts (4 frames each) and a
                                                # test list of action scripts after them
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.io import atomic_write_text

DEMO_SEED = 4242     # training uses seed 0, the held-out evaluation seed 777
GENERATE_SEEDS = (11, 22, 33, 44)
V2_CONFIG = "configs/experiments/demo_pixel/train.yaml"   # the v2 generator settings (seed replaced by DEMO_SEED)


def write_v2(out: Path, count: int) -> list:
    """The v2 demo inputs under ``out``: videos + test_list.txt (path|||caption), text_list.txt
    (caption|seed), class_prompts.txt (name|prompt per scene class), class_list.txt (label|seed)."""
    from tools.datasets.synthetic_physics import SyntheticPhysics, caption
    from utils.config import load_config

    ds_cfg = {k: v for k, v in dict(load_config(V2_CONFIG).dataset).items() if k not in ("type", "caption_drop")}
    ds = SyntheticPhysics(**dict(ds_cfg, seed=DEMO_SEED, length=count, label_mode="scene"))
    lst = ds.write_videos(str(out), count=count, fps=8)
    captions = [ds[i]["caption"] for i in range(count)]
    atomic_write_text(out / "text_list.txt", "# caption|seed: text-to-video in the v2 caption vocabulary\n"
                      + "".join(f"{c}|{i + 1}\n" for i, c in enumerate(captions)))
    prompts = zip(ds.class_names, (caption(a) for a in ds.class_attributes))  # a caption without colours
    atomic_write_text(out / "class_prompts.txt", "# name|prompt per scene class (label_mode: scene), in id order\n"
                      + "".join(f"{n}|{p}\n" for n, p in prompts))
    picks = ["1 ball, gravity down", "2 balls, gravity left", "3 balls, gravity up", "4 balls, gravity right"]
    atomic_write_text(out / "class_list.txt", "# label|seed: a scene class name of class_prompts.txt and a seed\n"
                      + "".join(f"{n}|{i + 1}\n" for i, n in enumerate(picks)))
    return [lst, out / "text_list.txt", out / "class_prompts.txt", out / "class_list.txt"]


ATARI_CONFIG = "configs/atari/play.yaml"   # its dataset: the held-out Pong episodes (seed 9001)
#: what each start's list line asks for after the 4 context frames (run-length names of the game table)
ATARI_SCRIPTS = ("UP*12,DOWN*12", "DOWN*12,UP*12", "NOOP*8,UP*8,DOWN*8", "UP*4,DOWN*4,UP*4,DOWN*4,NOOP*8")


def write_atari(out: Path, count: int) -> list:
    """Held-out Pong starts under ``out``: ``pong_<seed>_<episode>.mp4`` (the context_frames frames of each
    episode from the Play tab's START_FRAME on) and play_list.txt (path|||actions=: the frames' recorded actions, then a
    script from ATARI_SCRIPTS)."""
    from tools.datasets.atari import AtariEpisodes, game_spec
    from tools.inferences.web_play import START_FRAME
    from utils.config import load_config
    from utils.video_io import write_video

    cfg = load_config(ATARI_CONFIG)
    ds_cfg = {k: v for k, v in dict(cfg.dataset).items() if k != "type"}
    ds = AtariEpisodes(**ds_cfg)
    names = game_spec(ds.game).action_names
    first, ctx = START_FRAME, int(cfg.context_frames)
    lines, files = [], []
    for e in range(count):
        frames, actions = ds.episode(e)
        name = f"{ds.game}_{ds.settings['seed']}_{e:02d}.mp4"
        files.append(Path(write_video(out / name, frames[first:first + ctx], fps=float(cfg.fps), quality=0)))
        recorded = ",".join(names[a] if a >= 0 else "-1" for a in actions[first:first + ctx])
        lines.append(f"{name}|||actions={recorded},{ATARI_SCRIPTS[e % len(ATARI_SCRIPTS)]}\n")
    atomic_write_text(out / "play_list.txt", "# start video|||actions=: the start frames' recorded actions, then the "
                      "actions to play (configs/atari/play.yaml)\n" + "".join(lines))
    return files + [out / "play_list.txt"]


def main(argv=None) -> int:
    from tools.datasets.synthetic_physics import SyntheticPhysics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/demo")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--v2", action="store_true", help="write the v2 inputs into <out>/v2 instead")
    p.add_argument("--atari", action="store_true", help="write held-out Pong starts into data/atari instead")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.atari:
        print("wrote " + ", ".join(str(f) for f in write_atari(Path("data/atari"), args.count)))
        return 0
    if args.v2:
        print("wrote " + ", ".join(str(f) for f in write_v2(out / "v2", args.count)))
        return 0
    ds = SyntheticPhysics(resolution=32, num_frames=12, num_balls=[1, 3], seed=DEMO_SEED, length=args.count)
    lst = ds.write_videos(str(out), count=args.count, fps=8)
    atomic_write_text(out / "generate_list.txt",
                      "# caption|seed: unconditional rollouts from no context, one per seed\n"
                      + "".join(f"bouncing balls|{s}\n" for s in GENERATE_SEEDS))
    print(f"wrote {lst} and {out / 'generate_list.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
