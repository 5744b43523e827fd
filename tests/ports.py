"""Multi-process test helpers: a free loopback port for torchrun's rendezvous (so concurrent test runs
never collide) and one ``train_net.py`` run under torchrun."""
import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun_train(cfg, log_dir, *extra, nproc: int = 2, timeout: float = 400) -> None:
    """``train_net.py --cfg cfg log_dir <log_dir> batch_size=1 <extra>`` on ``nproc`` processes, one thread
    each; asserts it exits 0 (the output's tail in the message)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                        "--master_port", free_port(), str(ROOT / "train_net.py"), "--cfg", str(cfg),
                        "log_dir", str(log_dir), "batch_size=1", *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
