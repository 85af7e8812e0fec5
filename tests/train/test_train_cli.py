"""The command line end to end on a very small budget, and its errors for bad options."""

from __future__ import annotations

import json

import pytest

from nashmoe.cli import main

from .conftest import TINY_MODEL

SETS = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={v}")]
#: dense and smoe do not use segment_len (passing it is an error)
SETS_DENSE = [x for k, v in TINY_MODEL.items() if k != "segment_len" for x in ("--set", f"{k}={v}")]
QUICK = ["--steps", "3", "--batch-size", "4", "--log-interval", "1", "--tensorboard", "off",
         "--no-progress", "--threads", "1", "--eval-batch-size", "128", *SETS]  # fmt: skip
QUICK_DENSE = [*QUICK[: -len(SETS)], *SETS_DENSE]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_train_eval_generate_compare(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "namex", "--out", str(run), *QUICK]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_dir"] == str(run) and summary["best_step"] == 3
    assert summary["nash"]["solves"] == 3 and summary["nash"]["fallbacks"] == 0
    assert (run / "config.json").is_file() and (run / "metrics.csv").is_file()

    assert (
        main(["eval", str(run), "--split", "valid,test", "--json", str(tmp_path / "e.json")]) == 0
    )
    out = capsys.readouterr().out
    assert "validation: loss" in out and "test: loss" in out
    evaluated = json.loads((tmp_path / "e.json").read_text())
    result = json.loads((run / "result.json").read_text())
    assert evaluated["test"]["ppl"] == pytest.approx(result["test"]["ppl"], rel=1e-6)
    assert evaluated["weights"] == "best" and evaluated["step"] == 3

    assert main(["generate", str(run), "--prompt", "ROMEO:", "--tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 20
    assert main(["generate", str(run), "--prompt", "ab", "--tokens", "12", "--temperature",
                 "0"]) == 0  # fmt: skip
    greedy = capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "ab", "--tokens", "12", "--temperature", "0",
                 "--no-cache"]) == 0  # fmt: skip
    assert capsys.readouterr().out == greedy  # the cache changes nothing

    # --resume of a finished run: nothing left to train, the same result
    assert main(["train", "--method", "namex", "--out", str(run), "--resume", *QUICK]) == 0
    assert json.loads(capsys.readouterr().out)["test_ppl"] == summary["test_ppl"]

    out_dir = tmp_path / "cmp"
    rc = main(["compare", "--methods", "dense,namex-full-mom", "--seeds", "2", "--out",
               str(out_dir), *QUICK])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| dense |" in printed and "| namex-full-mom |" in printed and "±" in printed
    results = json.loads((out_dir / "results.json").read_text())
    assert results["methods"] == ["dense", "namex-full-mom"] and results["seeds"] == [0, 1]
    assert len(results["runs"]) == 4
    assert results["command"].startswith("nashmoe compare --methods dense,namex-full-mom")
    rows = {r["method"]: r for r in results["summary"]}
    assert rows["dense"]["rel_step_time"] == pytest.approx(1.0)
    assert rows["namex-full-mom"]["params_total"] > rows["dense"]["params_total"]
    assert rows["namex-full-mom"]["nash_fallbacks"] == 0
    assert rows["namex-full-mom"]["test_ppl"][1] is not None  # a std over the two seeds
    sim = next(r["similarity"] for r in results["runs"] if r["method"] == "namex-full-mom")
    assert len(sim["matrices"]) == 2 and len(sim["matrices"][0]) == 4
    assert all(-1.0 <= v <= 1.0 for v in sim["mean_offdiag"])
    md = (out_dir / "results.md").read_text()
    assert "| method | validation ppl | test ppl |" in md
    assert "No winner can be named from 2 seed(s)" in md  # too few seeds for a verdict
    assert "`segment_len` to namex-full-mom" in md  # dense does not use it: not applied to dense
    dense_run = next(r for r in results["runs"] if r["method"] == "dense")
    assert "segment_len" not in dense_run["config"]["model"]
    for name in ("loss_curves.png", "alpha.png", "similarity.png", "similarity_matrices.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG, name
    # --resume reuses the finished runs
    assert main(["compare", "--methods", "dense,namex-full-mom", "--seeds", "2", "--out",
                 str(out_dir), "--resume", "--no-plots", *QUICK]) == 0  # fmt: skip
    assert "(reused)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--methods", "dense,moe"], "unknown method(s) moe"),
        (["compare", "--methods", "smoe,namex", "--set", "segment_len=48"],
         "segment_len=48 must divide block_size=128 for method 'namex'"),
        (["train", "--set", "segment_len=48"], "segment_len=48 must divide block_size=128"),
        (["train", "--set", "n_layers=2"], "unknown model option 'n_layers'"),
        (["train", "--batch-size", "6", "--grad-accum", "4"], "not divisible by grad_accum"),
        (["train", "--corpus", "brown", "--data-dir", "{tmp}"], "brown/brown.zip"),
        (["train", "--tokenizer", "gpt2", "--data-dir", "{tmp}"], "gpt2-bpe"),
        (["eval", "{tmp}"], "no checkpoint found"),
        (["generate", "{tmp}", "--tokens", "0"], "--tokens must be >= 1"),
        (["eval", "{tmp}", "--split", "dev"], "unknown split"),
    ],
)  # fmt: skip
def test_bad_options_give_one_clear_line_and_exit_code_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nashmoe {argv[0]}: error: ")
    assert message in err
    assert "Traceback" not in err
    if "--data-dir" in argv:
        assert str(tmp_path) in err  # says where it looked


def test_unknown_method_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--method", "moe"])
    assert exc.value.code == 2
    assert "invalid choice: 'moe'" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    quick = [QUICK_DENSE[0], "1", *QUICK_DENSE[2:]]  # one step
    assert main(["train", "--method", "dense", "--out", str(run), *quick]) == 0
    capsys.readouterr()
    assert main(["train", "--method", "dense", "--out", str(run), "--resume", "--lr", "0.5",
                 *quick]) == 2  # fmt: skip
    assert "cannot resume" in capsys.readouterr().err
