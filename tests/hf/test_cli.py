"""``nashmoe convert`` and ``nashmoe upcycle`` on tiny checkpoints written offline."""

from __future__ import annotations

import pytest
import torch

from nashmoe.cli import main

from .tiny import dense_model, family_model, tokens

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("nashmoe.hf")


def test_convert_cli_writes_a_loadable_checkpoint(tmp_path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    original = family_model("qwen2_moe")
    original.save_pretrained(src)
    (src / "tokenizer.json").write_text("{}")
    code = main(
        [
            "convert",
            str(src),
            "--method",
            "namex",
            "--out",
            str(out),
            "--base",
            "shared",
            "--option",
            "segment_len=4",
            "--option",
            "gamma=0.5",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "tokenizer.json").exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.nashmoe["options"] == {"segment_len": 4, "gamma": 0.5, "base": "shared"}
    expected = hf.convert(
        family_model("qwen2_moe"), "namex", base="shared", segment_len=4, gamma=0.5
    )
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, expected(x).logits, atol=1e-6)


def test_upcycle_cli_bert(tmp_path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    dense_model("bert").save_pretrained(src)
    code = main(
        [
            "upcycle",
            str(src),
            "--num-experts",
            "4",
            "--method",
            "smear",
            "--out",
            str(out),
            "--noise",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert len(hf.moe_layers(loaded)) == 2
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, dense_model("bert")(x).logits, atol=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "{dense}", "--method", "namex", "--out", "{out}"], "upcycle"),
        (
            ["convert", "{moe}", "--method", "camex", "--out", "{out}", "--option", "gamma=1"],
            "gamma is only used by propagating",
        ),
        (
            ["convert", "{missing}", "--method", "smoe", "--out", "{out}"],
            "not a checkpoint directory",
        ),
        (
            ["upcycle", "{moe}", "--num-experts", "2", "--method", "smoe", "--out", "{out}"],
            "use nashmoe.hf.convert",
        ),
        (
            ["convert", "{moe}", "--method", "smoe", "--out", "{out}", "--option", "x"],
            "expected KEY=VALUE",
        ),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, message) -> None:
    paths = {
        "dense": tmp_path / "dense",
        "moe": tmp_path / "moe",
        "out": tmp_path / "out",
        "missing": tmp_path / "missing",
    }
    if "{dense}" in argv:
        dense_model("llama").save_pretrained(paths["dense"])
    if "{moe}" in argv:
        family_model("olmoe").save_pretrained(paths["moe"])
    capsys.readouterr()
    code = main([a.format(**{k: str(v) for k, v in paths.items()}) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert err.startswith(f"nashmoe {argv[0]}: error: ")


def test_missing_transformers_is_a_one_line_error(tmp_path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    for name in [m for m in sys.modules if m == "nashmoe.hf" or m.startswith("nashmoe.hf.")]:
        monkeypatch.delitem(sys.modules, name)
    code = main(["convert", str(tmp_path), "--method", "smoe", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "nashmoe convert: error: nashmoe.hf needs transformers: pip install 'nashmoe[hf]'"
