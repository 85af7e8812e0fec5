"""The training loop: outputs of a run, exact resumption, accumulation, exact evaluation,
best-on-validation selection, MoE diagnostics."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from nashmoe.data import iter_eval_batches
from nashmoe.models import GPT, GPTConfig
from nashmoe.train import evaluate, load_checkpoint, load_model, read_metrics, train

from .conftest import tiny_config


def test_a_run_writes_its_outputs_and_selects_on_validation(tmp_path, small_corpus):
    # 60 training characters: the model soon memorises them and validation gets worse, so the
    # selected (best validation) weights are not the last ones.
    overfit = dataclasses.replace(small_corpus, train=small_corpus.train[:60])
    cfg = tiny_config(
        tmp_path / "run", steps=12, eval_interval=3, lr=0.03, warmup=0, weight_decay=0.0
    )
    result = train(cfg, corpus=overfit)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["method"] == "namex-full-mom" and config["train"]["lr"] == 0.03
    assert config["model"]["n_layer"] == 2 and config["model"]["vocab_size"] == 66
    assert config["params"] == result.params
    cols = read_metrics(run)
    val_steps = [s for s, v in zip(cols["step"], cols["validation/loss"]) if v is not None]
    assert val_steps == [3, 6, 9, 12]
    vals = [v for v in cols["validation/loss"] if v is not None]
    assert result.best_step == val_steps[vals.index(min(vals))]
    assert result.validation["loss"] == pytest.approx(min(vals), abs=0)
    assert result.final_validation["loss"] == pytest.approx(vals[-1], abs=0)
    assert result.best_step < 12, "expected the overfitting run to select an earlier step"
    # test was evaluated once, on the selected weights
    loaded = load_model(run, weights="best")
    assert loaded.step == result.best_step
    again = evaluate(loaded.model, small_corpus.test, block_size=32)
    assert again["loss"] == pytest.approx(result.test["loss"], rel=1e-6)
    last = load_model(run, weights="last")
    assert last.step == 12
    assert evaluate(last.model, small_corpus.validation, block_size=32)["loss"] == pytest.approx(
        vals[-1], rel=1e-6
    )
    saved = json.loads((run / "result.json").read_text())
    assert saved["test"] == result.test and saved["best_step"] == result.best_step
    # MoE diagnostics: α and load per layer, residuals, statuses, ‖∂L/∂E_m‖
    for layer in (0, 1):
        alpha = [cols[f"alpha/l{layer}/e{i}"][0] for i in range(4)]
        assert all(a > 0 for a in alpha)
        load = [cols[f"load/l{layer}/e{i}"][0] for i in range(4)]
        assert sum(load) == pytest.approx(1.0)
    # namex-full(-mom): every MoE layer solves, every step, but the last one, whose step nothing
    # uses (it logs the incoming α)
    assert cols["nash/residual/l0"][0] < 1e-6 and "nash/residual/l1" not in cols
    assert cols["nash/solves"][11] == 12
    assert result.nash["solves"] == 12 and result.nash["fallbacks"] == 0
    assert all(g > 0 for g in cols["grad/base_norm"] if g is not None)
    assert result.base_grad_norm > 0
    assert cols["train/tokens_per_s"][0] > 0
    assert result.timing["steps_timed"] == 11


@pytest.mark.parametrize(
    ("method", "model"),
    [
        ("namex-full-mom", {"dropout": 0.1}),  # dropout: the RNG state must be restored too
        ("smoe", {"moe_options": {"router_noise": 0.5}}),
    ],
)
def test_resume_after_a_crash_is_exact(tmp_path, small_corpus, method, model):
    kw = dict(method=method, steps=10, eval_interval=5, ckpt_interval=4, model=model)
    reference = train(tiny_config(tmp_path / "a", **kw), corpus=small_corpus)

    class Crash(RuntimeError):
        pass

    def crash(step, metrics):
        if step == 7:  # after the checkpoint of step 4 and the evaluation of step 5
            raise Crash

    with pytest.raises(Crash):
        train(tiny_config(tmp_path / "b", **kw), corpus=small_corpus, on_step=crash)
    assert load_checkpoint(tmp_path / "b").step == 4
    resumed = train(tiny_config(tmp_path / "b", **kw), corpus=small_corpus, resume=True)

    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a["step"] == b["step"]
    for key in ("train/loss", "train/aux_loss", "train/grad_norm", "validation/loss", "test/loss"):
        assert a[key] == b[key], key
    sa, sb = load_checkpoint(tmp_path / "a").model_state(), load_checkpoint(tmp_path / "b")
    sb = sb.model_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.test == reference.test and resumed.best_step == reference.best_step


def test_resume_refuses_different_settings(tmp_path, small_corpus):
    train(tiny_config(tmp_path / "r", steps=2), corpus=small_corpus)
    with pytest.raises(ValueError, match=r"cannot resume: .* lr \(checkpoint 0.003, now 0.01\)"):
        train(tiny_config(tmp_path / "r", steps=2, lr=0.01), corpus=small_corpus, resume=True)


def test_resume_auto_without_checkpoint_starts_afresh(tmp_path, small_corpus):
    # resume=True with nothing to resume is an error (tests/reliability/test_run_dirs.py);
    # "auto" (what compare --resume uses per run) starts afresh
    result = train(tiny_config(tmp_path / "new", steps=2), corpus=small_corpus, resume="auto")
    assert result.best_step == 2


def test_gradient_accumulation_matches_one_batch(tmp_path, small_corpus):
    # Without the (batch-nonlinear) balance loss, two micro-batches of 4 equal one batch of 8.
    kw = dict(method="smear", steps=3, batch_size=8, model={"balance_coef": 0.0})
    one = train(tiny_config(tmp_path / "one", **kw), corpus=small_corpus)
    two = train(tiny_config(tmp_path / "two", grad_accum=2, **kw), corpus=small_corpus)
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert a["train/loss"][:3] == pytest.approx(b["train/loss"][:3], rel=1e-5)
    assert one.test["loss"] == pytest.approx(two.test["loss"], rel=1e-5)


@pytest.mark.parametrize("block_size", [32, 7])
def test_evaluation_is_exact(small_corpus, block_size):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=66,
            method="dense",
            n_layer=1,
            n_head=2,
            d_model=16,
            d_ff=32,
            block_size=block_size,
        )
    ).eval()
    data = small_corpus.validation[:301]
    got = evaluate(model, data, block_size=block_size, batch_size=5)
    # naive reference: every target once, in order; context = its evaluation block
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_eval_batches(data, batch_size=1, block_size=block_size):
            logits = model(x).logits[0]
            for t in range(block_size):
                if y[0, t] != -100:
                    total += float(F.cross_entropy(logits[t : t + 1], y[0, t : t + 1]))
                    count += 1
    assert count == got["tokens"] == 300
    assert got["loss"] == pytest.approx(total / count, rel=1e-6)
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)


@pytest.mark.parametrize("method", ["camex", "ep-camex", "namex", "smear"])
def test_base_gradient_norm_logged_where_there_is_a_base(tmp_path, small_corpus, method):
    result = train(tiny_config(tmp_path / method, method=method, steps=2), corpus=small_corpus)
    cols = read_metrics(tmp_path / method)
    if method == "smear":
        assert "grad/base_norm" not in cols and result.base_grad_norm is None
        assert "alpha/l0/e0" not in cols
    else:
        assert result.base_grad_norm > 0
    if method == "namex":  # α solved at the first MoE layer only, reused by the second
        assert result.nash["solves"] == 2
        assert cols["alpha/l0/e0"] == cols["alpha/l1/e0"]


def test_the_trainer_is_a_loop_of_named_steps(tmp_path, small_corpus):
    """``Trainer.fit`` runs setup, train_step, evaluate, log, save_checkpoint and finish; a
    subclass can override a step, and the numbers equal those of ``train``."""
    from nashmoe.train import Trainer

    calls: list[tuple[str, int]] = []

    class Recording(Trainer):
        def evaluate(self, done):
            calls.append(("evaluate", done))
            return {**super().evaluate(done), "custom/metric": float(done)}

        def save_checkpoint(self, done):
            calls.append(("save_checkpoint", done))
            super().save_checkpoint(done)

    config = tiny_config(tmp_path / "a", steps=4, eval_interval=2, ckpt_interval=2)
    result = Recording(config, corpus=small_corpus).fit()
    assert calls == [("evaluate", 2), ("save_checkpoint", 2), ("evaluate", 4),
                     ("save_checkpoint", 4)]  # fmt: skip
    cols = read_metrics(tmp_path / "a" / "metrics.csv")
    assert [v for v in cols["custom/metric"] if v is not None] == [2.0, 4.0]
    plain = train(tiny_config(tmp_path / "b", steps=4, eval_interval=2, ckpt_interval=2),
                  corpus=small_corpus)  # fmt: skip
    assert plain.test == result.test and plain.validation == result.validation


def test_bargaining_diagnostics_are_sampled_at_logging_steps(tmp_path, small_corpus):
    """The layers compute the diagnostics only on the last step of each logging interval
    (``set_bargaining_stats``); every logged row has them, and they are off after training."""
    from nashmoe.moe import MoEFeedForward
    from nashmoe.train import Trainer

    config = tiny_config(tmp_path / "run", method="namex", steps=6, log_interval=3)
    trainer = Trainer(config, corpus=small_corpus)
    result = trainer.fit()
    cols = read_metrics(tmp_path / "run")
    logged = [s for s, v in zip(cols["step"], cols["bargain/alpha_spread/l0"]) if v is not None]
    assert logged == [3, 6]
    # the sampled steps (3 and 6) cost more: timed apart, not in step_time_s; the first step
    # of the process is not timed either
    assert result.timing["steps_timed"] == 3 and result.timing["steps_sampled"] == 2
    assert all(0 <= float(v) < 10 for v in cols["bargain/alpha_spread/l0"] if v is not None)
    assert all(-1 <= float(v) <= 1 for v in cols["bargain/nash_vs_mean_cosine/l0"] if v)
    layers = [m for m in trainer.model.modules() if isinstance(m, MoEFeedForward)]
    assert layers and not any(m.bargaining_stats for m in layers)
    assert result.nash["solves"] > 0


def test_sampling_switch_is_reset_when_a_step_fails(tmp_path, small_corpus, monkeypatch):
    """A step that fails while the bargaining diagnostics are on leaves them off."""
    from nashmoe.moe import MoEFeedForward
    from nashmoe.train import Trainer
    from nashmoe.train.distributed import init_distributed, shutdown_distributed

    config = tiny_config(tmp_path / "run", method="namex", steps=2)
    trainer = Trainer(config, corpus=small_corpus)
    trainer.ctx = init_distributed(config.device, config.distributed)
    try:
        trainer.setup()
        layers = [m for m in trainer.model.modules() if isinstance(m, MoEFeedForward)]

        def boom(*args, **kwargs):
            assert layers and all(m.bargaining_stats for m in layers)  # log_interval 1
            raise RuntimeError("boom")

        monkeypatch.setattr(trainer, "wrapped", boom)
        with pytest.raises(RuntimeError, match="boom"):
            trainer.train_step(0)
        assert not any(m.bargaining_stats for m in layers)
        trainer.logger.close()
    finally:
        shutdown_distributed(trainer.ctx)


def test_wall_time_of_a_resumed_run_counts_the_earlier_process(tmp_path, small_corpus):
    import time

    kw = dict(method="namex", steps=4, ckpt_interval=2)

    class Crash(RuntimeError):
        pass

    def slow_then_crash(step, metrics):
        if step == 1:
            time.sleep(0.3)  # before the checkpoint of step 2: counted
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_config(tmp_path / "b", **kw), corpus=small_corpus, on_step=slow_then_crash)
    resumed = train(tiny_config(tmp_path / "b", **kw), corpus=small_corpus, resume=True)
    assert resumed.timing["earlier_wall_time_s"] >= 0.3
    fresh = train(tiny_config(tmp_path / "c", **kw), corpus=small_corpus)
    assert fresh.timing["earlier_wall_time_s"] == 0.0
