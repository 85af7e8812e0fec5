"""A deliberately naive reference for every MoE method, written for clarity, not speed.

Explicit Python loops over routing units, tokens and experts; each merged expert is built from the
list of experts tensor by tensor; the Nash weights come from an independent solver (scipy's
L-BFGS-B on the convex objective); complex momentum uses complex numbers. It shares only the
parameter tensors with the module under test, so autograd gives reference gradients too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from nashmoe.moe import MoEFeedForward
from nashmoe.moe.curvature import split_factor


def act_fn(name):
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
    }[name]


def apply_expert(x_token, expert, act):
    """One expert {w_in, w_gate?, w_out, b_in?, b_out?} on one token vector."""
    pre = expert["w_in"] @ x_token
    if "b_in" in expert:
        pre = pre + expert["b_in"]
    h = act(expert["w_gate"] @ x_token) * pre if "w_gate" in expert else act(pre)
    y = expert["w_out"] @ h
    if "b_out" in expert:
        y = y + expert["b_out"]
    return y


def expert_list(layer: MoEFeedForward):
    names = layer.layout.names
    return [{n: getattr(layer, n)[i] for n in names} for i in range(layer.config.num_experts)]


def naive_curvature(layer: MoEFeedForward, i: int, name: str, tau):
    """M_i(τ) for one tensor: Σ_r over terms, one mode product at a time via tensordot."""
    shape = tau.shape
    dims = [f for n in shape for f in split_factor(n)]
    t = tau.reshape(dims)
    mats = layer.curvature.mode_matrices(name)
    total = torch.zeros_like(t)
    for r in range(layer.config.curvature_rank):
        out = t
        for k in range(len(dims)):
            a = mats[k][r, i]
            # (A ×_k out)[..., p, ...] = Σ_q A[p, q] out[..., q, ...]
            out = torch.movedim(torch.tensordot(a, out, dims=([1], [k])), 0, k)
        total = total + out
    return total.reshape(shape)


def nash_alpha(players):
    """α with K α = 1/α for K the Gram matrix of the flattened players (scipy, float64)."""
    g = torch.stack([torch.cat([v.reshape(-1) for v in p.values()]) for p in players])
    k = (g @ g.T).detach().cpu().double().numpy()
    n = k.shape[0]

    def f(a):
        return 0.5 * a @ k @ a - np.sum(np.log(a)), k @ a - 1.0 / a

    a0 = 1.0 / np.sqrt(np.diag(k))
    res = minimize(
        f,
        a0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(1e-12, None)] * n,
        options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 10000},
    )
    a = res.x
    for _ in range(5):  # polish with plain undamped Newton steps on K α = 1/α
        a = a - np.linalg.solve(k + np.diag(1.0 / a**2), k @ a - 1.0 / a)
    return torch.tensor(a, dtype=torch.float64)


def router_logits(layer, v):
    """Router logits of one pooled vector (plus the router bias where configured)."""
    logits = layer.router @ v
    if layer.config.router_bias:
        logits = logits + layer.router_bias
    return logits


def select_topk(layer, logits):
    """smoe routing of one token, written out: (chosen experts, their weights)."""
    cfg = layer.config
    n = cfg.num_experts
    scores = torch.softmax(logits, -1) if cfg.score_func == "softmax" else torch.sigmoid(logits)
    choice = [float(scores[i].detach()) for i in range(n)]
    if cfg.bias_balancing:
        choice = [c + float(layer.expert_bias[i]) for i, c in enumerate(choice)]
    eligible = list(range(n))
    if cfg.n_group is not None:
        size = n // cfg.n_group
        groups = [list(range(g * size, (g + 1) * size)) for g in range(cfg.n_group)]
        group_score = [sum(sorted((choice[i] for i in grp), reverse=True)[:2]) for grp in groups]
        best = sorted(range(cfg.n_group), key=lambda g: -group_score[g])[: cfg.topk_group]
        eligible = [i for g in best for i in groups[g]]
    top = sorted(eligible, key=lambda i: -choice[i])[: cfg.top_k]
    weights = [scores[i] for i in top]
    if cfg.norm_topk:
        total = sum(weights)
        weights = [w / total for w in weights]
    return top, [w * cfg.routed_scaling for w in weights]


def merge_weights(layer, scores):
    """{expert: score} used by a unit's merge: all N, or the renormalised merge_top_k."""
    k = layer.config.merge_top_k
    n = layer.config.num_experts
    if k is None:
        return {i: scores[i] for i in range(n)}
    top = sorted(range(n), key=lambda i: -float(scores[i].detach()))[:k]
    total = sum(scores[i] for i in top)
    return {i: scores[i] / total for i in top}


def shared_output(layer, x_token, act):
    """The shared experts (one FFN of width shared_experts * shared_d_ff), gated if asked."""
    w = {nm: getattr(layer, "shared_" + nm) for nm in layer.shared_layout.names}
    y = apply_expert(x_token, w, act)
    if layer.config.shared_gate:
        y = torch.sigmoid(layer.shared_gate_weight[0] @ x_token) * y
    return y


def routing_scores(layer, x, attention_mask=None):
    """Per-unit score lists: a dict unit -> (token positions, scores [N])."""
    cfg = layer.config
    b, s, _ = x.shape
    units = []
    if cfg.unit == "segment":
        t = cfg.segment_len
        nseg = math.ceil(s / t)
        for bi in range(b):
            for j in range(nseg):
                positions = list(range(j * t, min((j + 1) * t, s)))
                if j == 0 and cfg.first_segment == "prior":
                    logits = layer.prior_logits
                else:
                    src = j - 1 if j > 0 else 0
                    src_pos = range(src * t, min((src + 1) * t, s))
                    mean = sum(x[bi, p] for p in src_pos) / len(src_pos)
                    if j == 0:
                        mean = mean.detach()
                    logits = router_logits(layer, mean)
                units.append((bi, positions, torch.softmax(logits, -1)))
    elif cfg.unit in ("sequence", "image"):
        for bi in range(b):
            keep = [p for p in range(s) if attention_mask is None or bool(attention_mask[bi, p])]
            mean = sum(x[bi, p] for p in keep) / len(keep)
            units.append((bi, list(range(s)), torch.softmax(router_logits(layer, mean), -1)))
    else:
        for bi in range(b):
            for p in range(s):
                units.append((bi, [p], torch.softmax(router_logits(layer, x[bi, p]), -1)))
    return units


class NaiveState:
    def __init__(self):
        self.base = None  # dict of tensors
        self.mu = None  # dict of complex tensors
        self.alpha = None
        self.layer = 0


def naive_layer(layer: MoEFeedForward, x, state: NaiveState | None, attention_mask=None):
    """Output [B, S, d] of one layer and the state for the next."""
    out, state = _naive_layer(layer, x, state, attention_mask)
    if layer.config.shared_experts:
        act = act_fn(layer.config.activation)
        extra = torch.zeros_like(out)
        for bi in range(x.shape[0]):
            for p in range(x.shape[1]):
                extra[bi, p] = shared_output(layer, x[bi, p], act)
        out = out + extra
    return out, state


def _naive_layer(layer: MoEFeedForward, x, state: NaiveState | None, attention_mask=None):
    cfg = layer.config
    act = act_fn(cfg.activation)
    b, s, _d = x.shape
    out = torch.zeros_like(x)
    names = layer.layout.names
    if cfg.method == "dense":
        w = {n: getattr(layer, n) for n in names}
        for bi in range(b):
            for p in range(s):
                out[bi, p] = apply_expert(x[bi, p], w, act)
        return out, state
    experts = expert_list(layer)
    if cfg.method == "smoe":
        for bi in range(b):
            for p in range(s):
                top, weights = select_topk(layer, router_logits(layer, x[bi, p]))
                for i, w in zip(top, weights):
                    out[bi, p] = out[bi, p] + w * apply_expert(x[bi, p], experts[i], act)
        return out, state
    n = cfg.num_experts
    # the base expert and the merge vectors
    if cfg.method == "smear":
        base, vectors, scale = None, experts, 1.0
    else:
        if cfg.propagates and not layer.owns_base:
            base, layer_index = state.base, state.layer
        else:
            base = {nm: getattr(layer, "base_" + nm) for nm in names}
            layer_index = 0
            state = NaiveState()
        tau = [{nm: e[nm] - base[nm] for nm in names} for e in experts]
        if cfg.merge_mask == "ties":
            masked = []
            for i in range(n):
                masked.append({})
                for nm in names:
                    total = sum(t[nm] for t in tau)
                    masked[i][nm] = tau[i][nm] * (torch.sign(tau[i][nm]) == torch.sign(total))
        else:
            masked = tau
        if cfg.curvature_rank > 0:
            vectors = [
                {nm: naive_curvature(layer, i, nm, masked[i][nm]) for nm in names} for i in range(n)
            ]
        else:
            vectors = masked
        scale = layer.eta
    # the Nash weights (before the merge: merge_weights may use them)
    if cfg.uses_nash:
        players = tau if cfg.bargain_on == "tau" else vectors
        solve = layer_index == 0 if cfg.nash_every is None else layer_index % cfg.nash_every == 0
        alpha = nash_alpha(players) if solve else state.alpha
    # merged experts, unit by unit
    for bi, positions, scores in routing_scores(layer, x, attention_mask):
        merged = {}
        if cfg.uses_nash and cfg.merge_weights != "router":
            a = [float(alpha[i]) for i in range(n)]
            if cfg.merge_weights == "nash":
                scores = torch.tensor([a[i] / sum(a) for i in range(n)], dtype=scores.dtype)
            else:  # product
                total = sum(scores[i] * a[i] for i in range(n))
                scores = torch.stack([scores[i] * a[i] / total for i in range(n)])
        used = merge_weights(layer, scores)
        for nm in names:
            acc = torch.zeros_like(experts[0][nm]) if base is None else base[nm].clone()
            for i, w in used.items():
                acc = acc + scale * w * vectors[i][nm]
            merged[nm] = acc
        for p in positions:
            out[bi, p] = apply_expert(x[bi, p], merged, act)
    if not cfg.propagates:
        return out, state
    # propagation
    new = NaiveState()
    new.layer = layer_index + 1
    if cfg.method == "ep-camex":
        mean = {nm: sum(v[nm] for v in vectors) / n for nm in names}
        if cfg.step_norm == "nash":  # the mean's direction with NAMEx's step length √N
            norm = torch.sqrt(sum((mean[nm] ** 2).sum() for nm in names))
            mean = {nm: mean[nm] * (math.sqrt(n) / norm) for nm in names}
        new.base = {nm: base[nm] + cfg.gamma * mean[nm] for nm in names}
        return out, new
    new.alpha = alpha
    delta = {nm: sum(float(alpha[i].detach()) * players[i][nm] for i in range(n)) for nm in names}
    if cfg.step_norm == "mean":
        mean_norm = torch.sqrt(sum(((sum(p[nm] for p in players) / n) ** 2).sum() for nm in names))
        delta_norm = torch.sqrt(sum((delta[nm] ** 2).sum() for nm in names))
        delta = {nm: delta[nm] * (mean_norm / delta_norm) for nm in names}
    if cfg.uses_momentum:
        beta = cfg.momentum * complex(math.cos(cfg.momentum_angle), math.sin(cfg.momentum_angle))
        prev = (
            state.mu
            if state.mu is not None
            else {nm: torch.zeros_like(delta[nm], dtype=torch.complex128) for nm in names}
        )
        new.mu = {nm: beta * prev[nm] + delta[nm].to(torch.complex128) for nm in names}
        new.base = {nm: base[nm] + (cfg.gamma * new.mu[nm]).real for nm in names}
    else:
        new.base = {nm: base[nm] + cfg.gamma * delta[nm] for nm in names}
    return out, new


def naive_stack(layers, x, attention_mask=None):
    """A residual stack h ← h + layer(h) through the naive reference; returns the final h."""
    h, state = x, None
    for layer in layers:
        y, state = naive_layer(layer, h, state, attention_mask)
        h = h + y
    return h


def module_stack(layers, x, attention_mask=None):
    """The same residual stack through the modules, threading the state explicitly."""
    h, state = x, None
    for layer in layers:
        y, aux = layer(h, state=state, attention_mask=attention_mask, return_aux=True)
        state = aux.state
        h = h + y
    return h
