"""``nashmoe data``: split statistics on the command line, clear errors."""

from __future__ import annotations

import json

from nashmoe.cli import main


def test_cli_prints_shakespeare_statistics(tmp_path, capsys):
    out_json = tmp_path / "info.json"
    assert main(["data", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "corpus shakespeare  tokenizer char  vocab 66" in out
    assert "1,003,854" in out and "55,770" in out
    info = json.loads(out_json.read_text())
    assert info["splits"]["train"]["tokens"] == 1_003_854


def test_cli_missing_data_names_the_path(tmp_path, capsys):
    assert main(["data", "--corpus", "brown", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "brown" / "brown.zip") in err and "nashmoe data: error:" in err
    assert main(["data", "--tokenizer", "word", "--min-freq", "0"]) == 2
    assert "min_freq must be a positive integer" in capsys.readouterr().err
