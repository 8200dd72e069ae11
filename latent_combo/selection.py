"""The offline hyperparameter rule: the paper's lowest final regulariser, among settings whose critic is sane.

COMBO's paper picks, among hyperparameter settings, the one with the lowest final regulariser E_rho[Q] - E_D[Q].
On its own the rule favours the strongest penalty of any grid (more penalty, lower Q on rho), and on sawyer-door
at beta = 1 it would keep a critic whose Q on the data sank below zero, though no return there can be negative.
Two checks, neither of which reads a return, exclude such settings before the rule picks:
- Q on data (its mean over the last tenth of training) below the floor r_min / (1 - gamma): the smallest
  discounted return any trajectory can have, given the data's smallest reward. Such a critic is wrong about the
  data itself, so its regulariser measures nothing.
- Q on data still moving, by more than `Q_MOVING` of its value over the last fifth (agent_training.relative_rise):
  the critic has not converged, so its regulariser is not final either.
A figure that is missing (an older run, an algorithm without a critic) leaves its check out.
When no setting passes both checks, the second is dropped and the rule picks among the settings above the floor,
saying so: an unsettled regulariser is still the best offline evidence there is, whereas a critic below the floor
is wrong about the data whatever its regulariser. (On sawyer-door medium-expert, CQL's Q on data stays between -4
and 6 on every beta of the grid, where a relative change of 10% is a few tenths of a reward.)
"""

from __future__ import annotations

import numpy as np

Q_MOVING = 0.10
MOVING = "Q on data still moving"


def mean_of(values: list) -> float | None:
    """Mean of the values that are present (None where none is)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def final_q(trace: list | None, fraction: float = 0.1) -> float | None:
    """Mean Q on data over the last `fraction` of a [[step, q], ...] trace (results.json's q_data_trace)."""
    if not trace:
        return None
    last = trace[-1][0]
    return float(np.mean([q for s, q in trace if s >= (1 - fraction) * last]))


def q_floor(reward_min: float | None, gamma: float) -> float | None:
    """The smallest discounted return with every reward at the data's smallest: r_min / (1 - gamma)."""
    return None if reward_min is None else reward_min / (1 - gamma)


def exclusions(q_data: float | None, q_rise: float | None, floor: float | None) -> list[str]:
    """Why a setting may not be picked (empty: it may)."""
    out = []
    if q_data is not None and floor is not None and q_data < floor:
        out.append(f"Q on data {q_data:.3g} below the floor {floor:.3g}")
    if q_rise is not None and abs(q_rise) > Q_MOVING:
        out.append(f"{MOVING} ({q_rise:+.1%} over the last fifth)")
    return out


def pick(candidates: list[dict]) -> tuple[int | None, bool]:
    """(index of the lowest `regulariser` among the candidates without `excluded` reasons, False); when there is
    none, (the same among candidates excluded only for still moving, True); (None, False) if none is left."""
    def lowest(ok) -> int | None:
        allowed = [i for i, c in enumerate(candidates) if c.get("regulariser") is not None and ok(c["excluded"])]
        return min(allowed, key=lambda i: candidates[i]["regulariser"]) if allowed else None

    strict = lowest(lambda reasons: not reasons)
    if strict is not None:
        return strict, False
    fallback = lowest(lambda reasons: all(r.startswith(MOVING) for r in reasons))
    return fallback, fallback is not None
