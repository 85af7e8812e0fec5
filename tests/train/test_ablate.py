"""``nashmoe ablate``: settings, paired differences by hand, resumption after an interruption,
time matching, and the command line."""

from __future__ import annotations

import importlib
import json
import math

import pytest

from nashmoe.cli import main
from nashmoe.train import train
from nashmoe.train.ablate import (
    GROUPS,
    Setting,
    ablate,
    group_settings,
    measure_step_time,
    paired_stats,
    paired_table,
    parse_setting,
    summarize_settings,
)
from nashmoe.train.config import options_for_method

from .conftest import tiny_config

compare_mod = importlib.import_module("nashmoe.train.compare")
ablate_mod = importlib.import_module("nashmoe.train.ablate")


def test_paired_stats_by_hand():
    # diffs 1, 2, 0 (seed 3 has no partner): mean 1, sample std 1, t(2) = 4.303
    e = paired_stats({0: 10.0, 1: 12.0, 2: 11.0}, {0: 9.0, 1: 10.0, 2: 11.0, 3: 5.0})
    assert e["seeds"] == [0, 1, 2] and e["diffs"] == [1.0, 2.0, 0.0]
    assert e["mean"] == pytest.approx(1.0) and e["std"] == pytest.approx(1.0)
    half = 4.303 / math.sqrt(3)
    assert e["ci95"] == pytest.approx([1 - half, 1 + half])
    assert e["status"] == "within noise"
    # diffs −1, −1.2, −0.8: std 0.2, interval [−1.497, −0.503]: lower
    e = paired_stats({0: 9.0, 1: 8.8, 2: 9.2}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert e["std"] == pytest.approx(0.2)
    assert e["ci95"] == pytest.approx([-1 - 4.303 * 0.2 / math.sqrt(3), -1 + 4.303 * 0.2 / 3**0.5])
    assert e["status"] == "lower"
    # a non-finite difference: no interval and no verdict (was 'higher')
    nan = paired_stats({0: 0.1, 1: math.nan, 2: 0.2}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert nan["ci95"] is None and nan["status"] == "undefined"
    assert ablate_mod._diff(nan) == "+nan (undefined)"
    inf = paired_stats({0: math.inf, 1: 1.0}, {0: 0.0, 1: 0.0})
    assert inf["ci95"] is None and inf["status"] == "undefined"
    assert paired_stats({0: math.nan}, {0: 0.0})["status"] == "undefined"
    one = paired_stats({0: 2.0}, {0: 1.5})
    assert one["std"] is None and one["ci95"] is None and one["status"] == "too few seeds"
    assert paired_stats({0: 1.0}, {1: 1.0}) is None


def _run(setting, seed, ppl, step_time, steps=10):
    return {
        "setting": setting,
        "seed": seed,
        "steps": steps,
        "test": {"ppl": ppl, "loss": math.log(ppl)},
        "validation": {"ppl": ppl + 1, "loss": math.log(ppl + 1)},
        "timing": {"step_time_s": step_time},
        "wall_time_s": 100 * step_time,
        "nash": {"residual_max": 1e-12 if setting != "b" else None},
    }


def test_paired_table_and_summary_on_a_toy_input():
    runs = [
        _run("ref", 0, 20.0, 0.10),
        _run("ref", 1, 22.0, 0.12),
        _run("ref", 2, 21.0, 0.11),
        _run("a", 0, 19.0, 0.20),
        _run("a", 1, 21.5, 0.20),
        _run("a", 2, 19.5, 0.23),
        _run("b", 0, 25.0, 0.10),
    ]
    table = paired_table(runs, ["ref", "a", "b"], "ref")
    by = {(e["setting"], e["metric"]): e for e in table}
    a = by[("a", "test_ppl")]
    assert a["diffs"] == [-1.0, -0.5, -1.5]
    assert a["mean"] == pytest.approx(-1.0) and a["std"] == pytest.approx(0.5)
    assert by[("a", "validation_ppl")]["diffs"] == [-1.0, -0.5, -1.5]
    assert by[("a", "step_time_s")]["diffs"] == pytest.approx([0.10, 0.08, 0.12])
    assert by[("b", "test_ppl")]["diffs"] == [5.0] and by[("b", "test_ppl")]["std"] is None
    rows = {r["setting"]: r for r in summarize_settings(runs, [Setting(n, "namex") for n in "ab"])}
    assert rows["a"]["test_ppl"] == pytest.approx(
        (20.0, math.sqrt(((-1) ** 2 + 1.5**2 + 0.5**2) / 2))
    )
    assert rows["b"]["test_ppl"] == (25.0, None) and rows["b"]["nash_residual_max"] is None
    assert rows["a"]["steps"] == [10] and rows["a"]["nash_residual_max"] == 1e-12


def test_parse_setting():
    s = parse_setting("g05:namex,gamma=0.5,n_layer=3,time_matched=true")
    assert s == Setting(
        "g05", "namex", {"n_layer": 3, "moe_options": {"gamma": 0.5}}, time_matched=True
    )
    assert s.describe() == "namex n_layer=3 gamma=0.5 [time-matched]"
    assert parse_setting("plain:smoe").options == {}
    for text, message in [
        ("nocolon", "is not of the form"),
        ("x:nomethod", "unknown method 'nomethod'"),
        ("x:namex,foo=1", "unknown model option 'foo'"),
        ("x:namex,gamma=abc", "cannot parse gamma"),
        ("a/b:namex", "must be non-empty and use only"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_setting(text)


def test_groups():
    for name in GROUPS:
        settings = group_settings([name])
        names = [s.name for s in settings]
        assert len(names) == len(set(names)) >= 2, name
        assert all(s.group == name for s in settings)
    assert len(group_settings(["momentum"])) == 11  # the reference + 2 r × 5 φ
    moms = {s.options["moe_options"]["momentum_angle"] for s in group_settings(["momentum"])[1:]}
    assert moms == {0.0, math.pi / 12, -math.pi / 12, math.pi / 6, -math.pi / 6}
    budget = group_settings(["budget"])
    its = [(s.options.get("moe_options") or {}).get("nash_max_iter", 20) for s in budget]
    assert its == [20, 1, 2, 5] and all(set(s.options) <= {"moe_options"} for s in budget)
    step = group_settings(["step-norm"])
    # every layer steps with its own τ in all four (namex, Δl = L, would confound the norm)
    assert [(s.name, s.method) for s in step] == [
        ("namex-full", "namex-full"),
        ("namex-full-mean", "namex-full"),
        ("ep-camex", "ep-camex"),
        ("ep-camex-nash-step", "ep-camex"),
    ]
    assert step[1].options == {"moe_options": {"step_norm": "mean"}}
    assert step[3].options == {"moe_options": {"step_norm": "nash"}}
    compute = group_settings(["compute"])
    timed = {s.method for s in compute if s.time_matched}
    assert timed == {"smoe", "smear", "camex", "ep-camex", "namex-full", "namex-mom",
                     "namex-full-mom"}  # fmt: skip
    assert sum(s.time_matched for s in compute) == 8
    assert compute[1].options == {"top_k": 1}
    assert len(group_settings(["all"])) == sum(len(g()) for g in GROUPS.values())
    with pytest.raises(ValueError, match="unknown group"):
        group_settings(["nope"])


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_every_group_builds_valid_configs(tmp_path, preset):
    """Every setting of every group gives a valid TrainConfig and model (no training): a bad
    override (e.g. a MoE option at the top level) is an error here, not after hours."""
    from nashmoe.models.gpt import GPTConfig
    from nashmoe.train import TrainConfig

    for s in group_settings(["all"]):
        config = TrainConfig(
            method=s.method,
            preset=preset,
            model=ablate_mod._merged_model({}, s),
            out_dir=str(tmp_path / s.name),
        )
        mcfg = GPTConfig.preset(preset, vocab_size=8, method=s.method, **config.model)
        moe = mcfg.moe_config(next(i for i in range(mcfg.n_layer) if mcfg.is_moe_block(i)))
        for key, value in (s.options.get("moe_options") or {}).items():
            assert getattr(moe, key) == value, (s.name, key)


def test_conflicting_names_are_an_error(tmp_path, small_corpus):
    base = tiny_config(tmp_path / "x", method="namex")
    with pytest.raises(ValueError, match="two different settings are named 'namex'"):
        ablate(base, [Setting("namex", "namex"), parse_setting("namex:namex,gamma=0.5")])
    with pytest.raises(ValueError, match="reference 'zz' is not a setting"):
        ablate(base, [Setting("namex", "namex")], reference="zz")


@pytest.fixture
def fast(monkeypatch, small_corpus):
    """The small corpus, and the names of the runs trained (not reused), in order."""
    monkeypatch.setattr(compare_mod, "_corpus_for", lambda config: small_corpus)
    calls: list[str] = []

    def counted(config, **kw):
        calls.append(config.name)
        return train(config, **kw)

    monkeypatch.setattr(compare_mod, "train", counted)
    return calls


def test_resumes_without_rerunning_finished_runs(tmp_path, fast, monkeypatch):
    base = tiny_config(tmp_path / "x", method="namex", steps=3)
    settings = [
        Setting("ref", "namex"),
        Setting("mean", "namex", {"moe_options": {"step_norm": "mean"}}),
        Setting("ep", "ep-camex", {"moe_options": {"step_norm": "nash"}}),
    ]
    out = tmp_path / "ablate"
    kw = dict(seeds=[0, 1], out=out, plots=False, log=lambda m: None)
    counted = compare_mod.train

    def interrupted(config, **k):
        if len(fast) == 3:
            raise KeyboardInterrupt  # the user stops the ablation in its fourth run
        return counted(config, **k)

    monkeypatch.setattr(compare_mod, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ablate(base, settings, **kw)
    assert fast == ["ref-s0", "mean-s0", "ep-s0"]
    monkeypatch.setattr(compare_mod, "train", counted)
    with pytest.raises(Exception, match="already holds run"):
        ablate(base, settings, **kw)
    result = ablate(base, settings, resume=True, **kw)
    assert fast[3:] == ["ref-s1", "mean-s1", "ep-s1"]  # the finished runs were not re-trained
    assert [r["reused"] for r in result.runs if r["seed"] == 0] == [True] * 3
    data = json.loads((out / "results.json").read_text())
    assert {(r["setting"], r["seed"]) for r in data["runs"]} == {
        (n, s) for n in ("ref", "mean", "ep") for s in (0, 1)
    }
    run = data["runs"][0]
    assert {"test", "validation", "wall_time_s", "steps", "nash", "bargaining"} <= set(run)
    assert set(run["bargaining"]) == {
        "alpha_spread",
        "nash_vs_mean_cosine",
        "step_rel_norm",
        "tau_cosine",
    }
    entry = next(e for e in data["paired"] if e["setting"] == "mean" and e["metric"] == "test_ppl")
    by_seed = {(r["setting"], r["seed"]): r["test"]["ppl"] for r in data["runs"]}
    assert entry["diffs"] == pytest.approx(
        [by_seed[("mean", s)] - by_seed[("ref", s)] for s in (0, 1)]
    )
    md = (out / "results.md").read_text()
    assert "Reference: `ref`." in md and "`ep`" in md and "α spread" in md
    # a finished ablation resumed again trains nothing
    ablate(base, settings, resume=True, **kw)
    assert len(fast) == 6


def test_time_matched_steps_are_calibrated_once(tmp_path, fast, monkeypatch):
    probes: list[str] = []
    times = {"namex": 0.02, "smoe-time": 0.005}

    def fake_probe(config, corpus, *, steps):
        probes.append(config.name)
        return times[config.name]

    monkeypatch.setattr(ablate_mod, "measure_step_time", fake_probe)
    base = tiny_config(tmp_path / "x", method="namex", steps=4, warmup=2)
    settings = [Setting("namex", "namex"), Setting("smoe-time", "smoe", time_matched=True)]
    kw = dict(seeds=[0], out=tmp_path / "a", plots=False, log=lambda m: None)
    result = ablate(base, settings, **kw)
    steps = {r["setting"]: r["steps"] for r in result.runs}
    assert steps == {"namex": 4, "smoe-time": 16}  # 4 × 0.02 s / 0.005 s
    cfg = next(r["config"] for r in result.runs if r["setting"] == "smoe-time")
    assert cfg["warmup"] == 8  # scaled with the steps
    assert sorted(probes) == ["namex", "smoe-time"]
    ablate(base, settings, resume=True, **kw)
    assert len(probes) == 2  # calibration.json reused
    # runtime options changed on resume (--jobs, --threads, progress): nothing re-probed or
    # re-trained (they are not part of a run's numbers)
    trained = len(fast)
    ablate(base.replace(progress=True, threads=1), settings, resume=True, **kw)
    assert len(probes) == 2 and len(fast) == trained
    monkeypatch.setattr(ablate_mod, "run_in_pool", _in_process_pool)
    ablate(base.replace(threads=1), settings, resume=True, jobs=2, **kw)
    assert len(probes) == 2 and len(fast) == trained
    fixed = ablate(base, settings, overwrite=True, seconds=0.05, **kw)
    assert {r["setting"]: r["steps"] for r in fixed.runs}["smoe-time"] == 10


def test_measure_step_time(tmp_path, small_corpus, monkeypatch):
    from nashmoe.train import Trainer

    seen = []
    setup = Trainer.setup

    def spy(self):
        seen.append(self)
        setup(self)

    monkeypatch.setattr(Trainer, "setup", spy)
    t = measure_step_time(tiny_config(tmp_path / "p", method="namex"), small_corpus, steps=2)
    assert 0 < t < 10
    # two timed steps; the last (logged) step samples the bargaining diagnostics, untimed
    assert seen[0].timing["steps_timed"] == 2 and seen[0].timing["steps_sampled"] == 1


def test_time_budget_comes_from_the_group_not_the_reference(tmp_path, monkeypatch):
    times = {"other": 0.01, "namex": 0.02, "smoe-time": 0.005, "custom-time": 0.004}
    probes: list[str] = []

    def fake_probe(config, corpus, *, steps):
        probes.append(config.name)
        return times[config.name]

    monkeypatch.setattr(ablate_mod, "measure_step_time", fake_probe)
    settings = [
        Setting("other", "smear", group="g0"),  # the overall reference
        Setting("namex", "namex", group="compute"),
        Setting("smoe-time", "smoe", time_matched=True, group="compute"),
        Setting("c0", "smear"),
        Setting("custom-time", "smoe", time_matched=True),
    ]
    _, _, firsts = ablate_mod._merge_settings(settings)
    base = tiny_config(tmp_path / "x", method="namex", steps=4)
    configs = {
        s.name: base.replace(
            method=s.method, name=s.name, model=options_for_method(base.model, s.method)
        )
        for s in settings
    }
    times["c0"] = 0.002
    kw = dict(steps=4, probe_steps=2, corpus=lambda c: None, log=lambda m: None)
    cal = ablate_mod._time_matched_steps(
        configs, settings, firsts, seconds=None, path=tmp_path / "c.json", **kw
    )
    assert cal["smoe-time"]["steps"] == 16 and cal["smoe-time"]["budget_from"] == "namex"
    assert cal["custom-time"]["steps"] == 2 and cal["custom-time"]["budget_from"] == "c0"
    assert "other" not in probes and cal["namex"]["budget_s"] == pytest.approx(0.08)
    fixed = ablate_mod._time_matched_steps(
        configs, settings, firsts, seconds=0.05, path=tmp_path / "c.json", **kw
    )
    assert fixed["smoe-time"]["steps"] == 10 and fixed["smoe-time"]["budget_from"] == "--seconds"


def test_time_budget_ignores_an_explicit_reference(tmp_path, fast, monkeypatch):
    times = {"other": 0.01, "namex": 0.02, "smoe-time": 0.005}
    monkeypatch.setattr(ablate_mod, "measure_step_time", lambda c, corpus, *, steps: times[c.name])
    base = tiny_config(tmp_path / "x", method="namex", steps=4, warmup=2)
    settings = [
        Setting("namex", "namex", group="compute"),
        Setting("smoe-time", "smoe", time_matched=True, group="compute"),
        Setting("other", "smear", group="g0"),
    ]
    kw = dict(seeds=[0], out=tmp_path / "a", plots=False, log=lambda m: None)
    result = ablate(base, settings, reference="other", **kw)
    assert {r["setting"]: r["steps"] for r in result.runs}["smoe-time"] == 16  # namex's budget
    md = (tmp_path / "a" / "results.md").read_text()
    assert "`smoe-time` 16 steps at 5.0 ms (budget 0.08 s, from `namex`)" in md


def _in_process_pool(fn, tasks, *, jobs, done, progress=None):
    """run_in_pool's contract in this process (the test's monkeypatches reach the runs)."""
    for key, task in tasks:
        done(key, fn(task, None))


def test_a_failed_run_stops_the_pool_after_saving_the_finished(tmp_path, fast, monkeypatch):
    monkeypatch.setattr(ablate_mod, "run_in_pool", _in_process_pool)
    counted = compare_mod.train

    def fails(config, **k):
        if config.name == "b-s0":
            raise RuntimeError("run b failed")
        return counted(config, **k)

    monkeypatch.setattr(compare_mod, "train", fails)
    base = tiny_config(tmp_path / "x", method="namex", steps=2)
    settings = [Setting("a", "namex"), Setting("b", "namex-mom"), Setting("c", "smear")]
    messages: list[str] = []
    kw = dict(seeds=[0], out=tmp_path / "o", plots=False, jobs=2)
    with pytest.raises(RuntimeError, match="run b failed"):
        ablate(base, settings, log=messages.append, **kw)
    assert fast == ["a-s0"]  # c was not started
    assert "stopped after 1 of 3 runs" in messages[-1] and "--resume" in messages[-1]
    monkeypatch.setattr(compare_mod, "train", counted)
    result = ablate(base, settings, resume=True, log=messages.append, **kw)
    assert fast == ["a-s0", "b-s0", "c-s0"]  # a reused
    assert [r.get("reused", False) for r in result.runs] == [True, False, False]


def test_nash_every_note_in_the_results(tmp_path, fast):
    base = tiny_config(tmp_path / "x", method="namex", steps=2)
    settings = [Setting("a", "namex"), Setting("b", "namex-mom")]
    shared = {**base.model, "moe_options": {"nash_every": 2}}  # a --set nash_every=2
    out = tmp_path / "o"
    ablate(base, settings, model_overrides=shared, seeds=[0], out=out, plots=False,
           log=lambda m: None)  # fmt: skip
    notes = json.loads((out / "results.json").read_text())["notes"]
    assert len(notes) == 2 and "`a` (nash_every=2) equals nash_every=L" in notes[0]
    assert "with 2 MoE layers" in notes[0]
    md = (out / "results.md").read_text()
    assert "Notes:" in md and notes[1] in md
    # a deep enough model: Δl = 2 differs from Δl = L, no note
    deep = ablate_mod._nash_every_notes(
        [Setting("d", "namex", {"n_layer": 4, "moe_options": {"nash_every": 2}})],
        {"d": base.replace(model={**base.model, "n_layer": 4, "moe_options": {"nash_every": 2}})},
    )
    assert deep == []


def test_cli(tmp_path, capsys, fast):
    argv = ["ablate", "--out", str(tmp_path / "o"), "--seeds", "1", "--no-plots"]
    assert main([*argv]) == 2
    assert "no settings" in capsys.readouterr().err
    assert main([*argv, "--setting", "a:namex,foo=1"]) == 2
    assert "unknown model option 'foo'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--group", "nope"])
    assert exc.value.code == 2
    quick = ["--steps", "2", "--batch-size", "2", "--log-interval", "1", "--tensorboard", "off",
             "--no-progress", "--threads", "1", "--set", "n_layer=2", "--set", "d_model=16",
             "--set", "d_ff=32", "--set", "n_head=2", "--set", "block_size=32",
             "--set", "segment_len=8"]  # fmt: skip
    code = main(
        [
            *argv,
            *quick,
            "--setting",
            "r:namex",
            "--setting",
            "g:namex,gamma=0.5",
            "--reference",
            "r",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "Reference: `r`." in out and "`g`" in out


def test_bargaining_table_and_plot(tmp_path):
    from nashmoe.train.plots import plot_bargaining
    from nashmoe.train.report import format_bargaining

    rows = [
        {"setting": "a", "bargaining": {"alpha_spread": [0.01, None], "tau_cosine": [0.5, 0.25]}},
        {"setting": "smoe", "bargaining": {}},
    ]
    table = format_bargaining(rows, key="setting")
    assert "| a | 0 | 0.01 | — | — | 0.5000 |" in table
    assert "| a | 1 | — | — | — | 0.2500 |" in table and "smoe" not in table
    assert format_bargaining([rows[1]], key="setting") == ""
    pytest.importorskip("matplotlib")
    metrics = {"a": {"step": [1, 2], "bargain/step_rel_norm/l0": [0.1, 0.2]}, "b": {"step": [1]}}
    assert plot_bargaining(metrics, tmp_path / "b.png").is_file()
    assert plot_bargaining({"b": {"step": [1]}}, tmp_path / "c.png") is None


def test_references_per_group_or_explicit():
    from nashmoe.train.ablate import _group_references, _merge_settings

    given = [*group_settings(["budget", "nash-every"]), parse_setting("g05:namex,gamma=0.5")]
    settings, groups, firsts = _merge_settings(given)
    assert [s.name for s in settings].count("namex-full") == 1  # shared: trained once
    assert groups["namex-full"] == ["budget", "nash-every"]
    assert firsts == {"budget": "namex-full", "nash-every": "namex", "custom": "g05"}
    per_group = _group_references(settings, groups, firsts, "namex-full", explicit=False)
    assert per_group == {
        # custom settings go with the default reference, the first group's
        "namex-full": ["namex-full", "namex-full-it1", "namex-full-it2", "namex-full-it5", "g05"],
        "namex": ["namex", "namex-full", "namex-dl2"],
    }
    explicit = _group_references(settings, groups, firsts, "namex", explicit=True)
    assert explicit == {"namex": [s.name for s in settings]}
