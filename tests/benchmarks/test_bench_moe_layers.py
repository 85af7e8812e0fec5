"""The layer benchmark as users run it: a quick run of every merge-path suffix writes its JSON,
and the suffixes change what they say (benchmarks/bench_moe_layers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_with_suffixes(tmp_path):
    methods = "dense,camex,camex@rebuild,camex@units"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_moe_layers.py"),
            "--quick",
            "--methods",
            methods,
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    data = json.loads((tmp_path / "moe_layers_quick.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == methods.split(",")
    for r in rows.values():
        assert r["time_s"] > 0 and r["memory_bytes"] > 0 and r["predicted_s"] > 0
    # the quick shape fits the CPU's keep budget: the tiled merge saves the merged weights
    # (U·2·d·f float32 numbers per layer), @rebuild and the unit-chunked path do not
    units = rows["camex"]["tokens"] // rows["camex"]["segment_len"]
    kept = rows["camex"]["layers"] * units * 2 * rows["camex"]["d_model"] * rows["camex"]["d_ff"]
    assert rows["camex"]["memory_bytes"] - rows["camex@rebuild"]["memory_bytes"] == 4 * kept
    assert rows["camex@units"]["memory_bytes"] == rows["camex@rebuild"]["memory_bytes"]
    # the cost model follows: kept weights skip the rebuild
    assert rows["camex"]["predicted_s"] < rows["camex@rebuild"]["predicted_s"]
