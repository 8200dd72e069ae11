"""bench/gpu.py: explains itself without a GPU; its measurements run end to end on CPU at tiny batches."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the bench would measure it")
def test_without_a_gpu_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True)
    assert done.returncode == 0 and "no CUDA GPU present" in done.stdout


@pytest.mark.slow
def test_measurements_run_on_cpu_at_tiny_batches():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--iters", "1",
                           "--eval-steps", "3", "wm.batch=2", "agent.rollout_batch=50", "agent.batch=32"],
                          capture_output=True, text=True, env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ})
    assert done.returncode == 0, done.stderr
    assert "projected walker-walk run" in done.stdout and "agent update" in done.stdout
