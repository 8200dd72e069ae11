"""What the CLI and `precision=auto` pick on a CPU: OpenMP's wait before sleeping, bf16 where the hardware has it."""

import os
import subprocess
import sys

import torch

from latent_combo.utils import autocast, native_bf16


def cli_env(**env):
    """GOMP_SPINCOUNT as a process that imported latent_combo.cli sees it, from a clean environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", "import os, latent_combo.cli; print(os.environ.get('GOMP_SPINCOUNT'))"],
                         env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_cli_spins_briefly_unless_the_environment_says_how_to_wait():
    assert cli_env() == "10000"
    assert cli_env(OMP_WAIT_POLICY="PASSIVE") == "None"  # the user's (and sweep trials') choice stands
    assert cli_env(GOMP_SPINCOUNT="5") == "5"


def test_auto_precision_is_bf16_exactly_where_the_hardware_has_it():
    cpu = torch.device("cpu")
    assert autocast(cpu, "auto").fast_dtype == torch.bfloat16
    assert autocast(cpu, "auto")._enabled == native_bf16(cpu)
    assert autocast(cpu, "bf16")._enabled and not autocast(cpu, "fp32")._enabled
    assert native_bf16(torch.device("cuda")) and not native_bf16(torch.device("meta"))
