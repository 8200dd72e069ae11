"""Latent agent update speed: latent_combo's Agent against the plain SAC / SAC+CQL reference.

    .venv/bin/python bench/agent.py [--quick] [--seconds 3] [--threads N] [--feat 230] [--batch 256]

One update = one critic step (Bellman error, plus the conservative penalty where the algorithm has one),
one actor step, one temperature step and the target-network update, at hidden 256, batch 256 (latent_combo:
128 real + 128 model transitions, the paper preset's real_ratio 0.5), latent (feat) dim 230, action dim 6.
Rows:
  combo logsumexp   latent_combo Agent, algo combo, CQL(H) form: 10 uniform + 10 policy actions per model state
  combo sampled     the same objective, its gradient through one action per state drawn from the softmax weights
                    (agent.penalty_grad=sampled): the 20 actions are evaluated without a graph
  combo policy      latent_combo Agent, algo combo, eq. 2 as written (Q at one policy action per model state)
  lmbpo             latent_combo Agent, no penalty: plain SAC on the real/model mixture
  ref SAC+CQL       bench/reference.py RefAgent with the penalty: 10 uniform + 10 pi(s) + 10 pi(s') actions over
                    the whole batch, each critic on its own, states repeated per action (as the CQL code)
  ref SAC           bench/reference.py RefAgent without the penalty
"vs ref" compares penalised rows with ref SAC+CQL and lmbpo with ref SAC. GFLOP/s = FLOPs of one update
(torch.utils.flop_counter: the matmuls) / seconds per update, against the fp32 matmul peak measured in the
same run. Printed, not asserted; other load on the machine lowers every column.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from common import count_flops, load_note, machine_line, matmul_peak, print_table, set_threads, time_it


def make_batch(n: int, feat: int, action_dim: int, gen: torch.Generator) -> dict:
    return {
        "state": torch.randn(n, feat, generator=gen),
        "action": torch.rand(n, action_dim, generator=gen) * 2 - 1,
        "reward": torch.rand(n, generator=gen),
        "next_state": torch.randn(n, feat, generator=gen),
        "discount": torch.ones(n),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 1 s of updates per row instead of --seconds")
    p.add_argument("--seconds", type=float, default=3.0, help="time each row for at least this long")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: os.cpu_count())")
    p.add_argument("--feat", type=int, default=230, help="latent (feat) dimension")
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--batch", type=int, default=256, help="transitions per update (latent_combo: half real)")
    a = p.parse_args(argv)
    from reference import RefAgent

    from latent_combo.agent import Agent
    from latent_combo.config import resolve

    set_threads(a.threads)
    seconds = 1.0 if a.quick else a.seconds
    base = dataclasses.replace(resolve("paper").agent, batch=a.batch)
    n_real = int(round(a.batch * base.real_ratio))
    gen = torch.Generator().manual_seed(0)
    real = make_batch(n_real, a.feat, a.action_dim, gen)
    model = make_batch(a.batch - n_real, a.feat, a.action_dim, gen)
    mixed = {k: torch.cat([real[k], model[k]]) for k in real}

    print(machine_line())
    if load_note():
        print(load_note())
    print(f"agent: hidden {base.hidden} x {base.layers} layers, batch {a.batch} ({n_real} real + {a.batch - n_real} "
          f"model), feat {a.feat}, action {a.action_dim}, penalty actions {base.penalty_actions}; "
          f">= {seconds:g} s of updates per row after 3 warm-up updates")
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3 torch.mm): {peak:.1f} GFLOP/s")

    def ours(algo, form, grad="exact"):
        agent = Agent(dataclasses.replace(base, penalty_form=form, penalty_grad=grad), algo, a.feat, a.action_dim)
        return lambda: agent.update(real, model)

    def ref(penalty):
        agent = RefAgent(a.feat, a.action_dim, base.hidden, penalty=penalty, num_actions=base.penalty_actions,
                         beta=base.beta, gamma=base.gamma, tau=base.tau, actor_lr=base.actor_lr,
                         critic_lr=base.critic_lr, init_alpha=base.init_alpha)
        return lambda: agent.update(mixed)

    n = base.penalty_actions
    impls = [  # name, penalty description, builder, reference row it is compared with
        ("combo logsumexp", f"{n} unif + {n} pi at s_model", lambda: ours("combo", "logsumexp"), "ref SAC+CQL"),
        ("combo sampled", f"{n} unif + {n} pi at s_model, 1 with grad", lambda: ours("combo", "logsumexp", "sampled"),
         "ref SAC+CQL"),
        ("combo policy", "1 pi at s_model", lambda: ours("combo", "policy"), "ref SAC+CQL"),
        ("lmbpo", "none", lambda: ours("lmbpo", "logsumexp"), "ref SAC"),
        ("ref SAC+CQL", f"{n} unif + {n} pi(s) + {n} pi(s')", lambda: ref(True), None),
        ("ref SAC", "none", lambda: ref(False), None),
    ]
    results = {}
    for name, penalty, build, _ in impls:
        torch.manual_seed(0)
        update = build()
        flops = count_flops(update)  # also the first warm-up update (optimiser state allocated)
        sec = time_it(update, iters=5, warmup=2, min_seconds=seconds)
        results[name] = (penalty, flops, sec)
        print(f"  done {name}: {1 / sec:.1f} updates/s", flush=True)
    rows = []
    for name, _, _, vs in impls:
        penalty, flops, sec = results[name]
        gflops = flops / sec / 1e9
        speedup = f"{results[vs][2] / sec:.2f}x" if vs else "1.00x"
        rows.append([name, penalty, f"{flops / 1e9:.2f}", f"{sec * 1e3:.1f}", f"{1 / sec:.1f}", f"{gflops:.1f}",
                     f"{gflops / peak:.0%}", speedup])
    print()
    print_table(["impl", "penalty", "GFLOP/upd", "ms/update", "updates/s", "GFLOP/s", "% peak", "vs ref"], rows,
                "<<>>>>>>")
    print(f"(peak {peak:.1f} GFLOP/s; vs ref: penalised rows against ref SAC+CQL, lmbpo against ref SAC)")


if __name__ == "__main__":
    main()
