"""backend.compile (tools/backends/compile.py): the setting, compiled blocks equal eager blocks (training and
the cached bf16 denoise step), a rollout does not recompile per clip, the inductor cache directory."""
import copy
import os

import pytest
import torch
from test_speed_paths import make_model  # the tiny model with non-zero gates (eval mode; the tests set modes)

from tools.backends.compile import (
    DEFAULT_CACHE,
    CompileCounter,
    check_compile,
    compile_blocks,
    compiled_blocks,
    use_cache_dir,
)
from utils.registry import BACKEND


def test_compile_setting_is_checked_and_resolved():
    with pytest.raises(ValueError, match=r"backend.compile='yes' is not a compile mode; choose one of off, blocks"):
        check_compile("yes")
    be = BACKEND.build({"type": "cpu", "precision": "fp32", "compile": "off"})
    model = make_model()
    assert be.compile_model(model, training=True) == 0 and compiled_blocks(model) == 0
    auto = BACKEND.build({"type": "cpu", "precision": "fp32", "compile": "auto"})
    assert auto.compile_mode(training=True) in ("off", "blocks")
    assert auto.compile_mode(training=False) in ("off", "blocks")
    blocks = BACKEND.build({"type": "cpu", "precision": "fp32", "compile": "blocks", "compile_cache": None})
    assert blocks.compile_model(model, training=True) == len(model.blocks) == compiled_blocks(model)
    assert blocks.compile_model(model, training=True) == 0  # already compiled: nothing more
    assert set(model.state_dict()) == set(make_model().state_dict())  # checkpoints keep their keys


def test_cache_dir_setting_names_inductors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "env"))
    assert use_cache_dir(None) is None and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "env")
    assert use_cache_dir(tmp_path / "cc") == str((tmp_path / "cc").resolve())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cc").resolve()) and (tmp_path / "cc").is_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str((tmp_path / "cc").resolve())  # where inductor now keeps its artefacts


@pytest.mark.slow
def test_compiled_blocks_equal_eager_in_training_and_in_the_cached_bf16_step():
    """Training forward and gradients in fp32 (float tolerance), the cached guided denoise step with the
    weights cast to bf16 (bf16 tolerance: 2 ulps of the output's magnitude). Inductor's artefacts go to the
    project's default cache (workspace/compile_cache), so a second run of the suite compiles from the cache."""
    eager = make_model()
    comp = copy.deepcopy(eager)
    assert compile_blocks(comp, DEFAULT_CACHE) == 2
    g = torch.Generator().manual_seed(1)
    B, Fr = 2, 6
    xn, xc = torch.randn(B, 3, Fr, 8, 8, generator=g), torch.randn(B, 3, Fr, 8, 8, generator=g)
    cl, t = torch.tensor([[2, 2, 2]] * B), torch.rand(B, 3, generator=g)
    ys = []
    for m in (eager, comp):
        y = m.train()(xn, xc, cl, t)
        y.square().mean().backward()
        ys.append(y)
    torch.testing.assert_close(ys[1], ys[0], rtol=1e-4, atol=1e-5)
    for (n, a), b in zip(eager.named_parameters(), comp.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=n)

    be = BACKEND.build({"type": "cpu", "precision": "bf16", "compile": "off"})
    ref, fast = eager.eval(), copy.deepcopy(eager).eval()
    be.cast_for_sampling(ref)
    be.cast_for_sampling(fast)
    compile_blocks(fast, DEFAULT_CACHE)
    from tools.models.kv_rollout import DenoiseCall

    with torch.no_grad(), CompileCounter() as c:
        outs = []
        for m in (ref, fast):
            cache = m.encode_history(xc[:, :, :4], 0, clip_lens=[2, 2])
            outs.append(m.denoise(xn[:, :, 4:], t[:, 2], cache=cache, branches=[DenoiseCall()]))
    assert c.graphs > 0  # it really compiled
    for a, b in zip(*outs):
        assert a.dtype == b.dtype == torch.bfloat16
        assert (a.float() - b.float()).abs().max() <= 2 * 2 ** -7 * a.float().abs().max()


@pytest.mark.slow
def test_a_rollout_compiles_while_the_window_fills_then_never_again():
    """Clips of 2 frames, window 6: the history grows 2, 4, 6 frames, then slides (clip 4). The cached denoise step
    has the same shapes at every clip; encode_history's token count changes until the window is full and
    is compiled dynamic at its second length. Counted per clip (dynamo's graph counter): nothing compiles
    after the second clip, however long the rollout. Which graphs dynamo makes does not depend on the code
    generator, so dynamo's 'eager' backend stands in for inductor (seconds instead of minutes)."""
    from torch._dynamo.utils import counters

    from tools import load_components
    from tools.inferences.rollout import RolloutSettings, rollout
    from utils.registry import DIFFUSION

    load_components()
    model = make_model().eval()
    be = BACKEND.build({"type": "cpu", "precision": "bf16", "compile": "off"})
    be.cast_for_sampling(model)
    assert compile_blocks(model, None, compiler="eager") == 2
    diffusion = DIFFUSION.build({"type": "RectifiedFlow"}, "diffusion")
    graphs = [counters["stats"]["unique_graphs"]]  # before the rollout, then after every clip
    settings = RolloutSettings(num_clips=4, clip_len=2, window=6, num_sample_steps=2, history_guide_scale=1.5)
    ctx = torch.randn(1, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    rollout(model, diffusion, ctx, settings, progress=lambda i, n: graphs.append(counters["stats"]["unique_graphs"]))
    assert len(graphs) == 5 and graphs[1] > graphs[0], graphs  # the first clip compiled the blocks
    assert graphs[2:] == [graphs[2]] * 3, graphs  # nothing compiled after the second clip


def test_auto_compiles_cpu_training_only_and_everything_on_a_gpu(monkeypatch):
    from tools.backends.cuda import CUDABackend

    cpu = BACKEND.build({"type": "cpu", "precision": "fp32", "compile": "auto"})
    assert (cpu.compile_mode(training=True), cpu.compile_mode(training=False)) == ("blocks", "off")
    model = make_model()
    assert cpu.compile_model(model, training=False) == 0 and compiled_blocks(model) == 0
    monkeypatch.setattr(CUDABackend, "setup", lambda self: None)  # no GPU here: only the policy is checked
    gpu = CUDABackend(precision="bf16", compile="auto")
    assert (gpu.compile_mode(training=True), gpu.compile_mode(training=False)) == ("blocks", "blocks")
