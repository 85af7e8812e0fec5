"""The image experiment's summary on hand-made runs: family accuracies, paired differences
(references and the momentum pairs), and the table."""

from __future__ import annotations

import pytest

from nashmoe.vision.corruptions import CORRUPTION_FAMILIES, CORRUPTIONS
from nashmoe.vision.report import family_accuracy, format_table, summarize


def test_families_partition_the_corruptions() -> None:
    names = [n for family in CORRUPTION_FAMILIES.values() for n in family]
    assert sorted(names) == sorted(CORRUPTIONS) and len(names) == 15
    assert list(CORRUPTION_FAMILIES) == ["noise", "blur", "weather", "digital"]


def _run(method: str, seed: int, clean: float, noise: float, other: float) -> dict:
    acc = {c: [other] * 5 for c in CORRUPTIONS}
    for c in CORRUPTION_FAMILIES["noise"]:
        acc[c] = [noise] * 5
    mean = (3 * noise + 12 * other) / 15
    return {
        "method": method,
        "seed": seed,
        "clean_accuracy": clean,
        "corruption_accuracy": acc,
        "mean_corruption_accuracy": mean,
        "severities": [1, 2, 3, 4, 5],
        "severity_accuracy": [mean] * 5,
    }


def test_family_accuracy_by_hand() -> None:
    acc = {"gaussian_noise": [0.5, 0.3], "shot_noise": [0.1, 0.1], "fog": [0.9, 0.7]}
    got = family_accuracy(acc)
    assert got == pytest.approx({"noise": 0.25, "weather": 0.8})


def test_summary_families_and_momentum_pairs() -> None:
    runs = [
        _run("dense", 0, 0.50, 0.30, 0.40),
        _run("dense", 1, 0.52, 0.32, 0.42),
        _run("namex-full", 0, 0.60, 0.40, 0.50),
        _run("namex-full", 1, 0.62, 0.40, 0.50),
        _run("namex-full-mom", 0, 0.61, 0.45, 0.52),
        _run("namex-full-mom", 1, 0.62, 0.47, 0.52),
    ]
    summary = summarize(runs)
    assert summary["families"]["noise"] == list(CORRUPTION_FAMILIES["noise"])
    noise = summary["methods"]["namex-full-mom"]["family_accuracy"]["noise"]
    assert noise["mean"] == pytest.approx(0.46) and noise["std"] == pytest.approx(0.02**0.5 / 10)
    pair = summary["paired_differences"]["namex-full-mom - namex-full"]
    assert pair["seeds"] == [0, 1]
    assert pair["clean_accuracy"]["mean"] == pytest.approx(0.005)
    assert pair["family_accuracy"]["noise"]["values"] == pytest.approx([0.05, 0.07])
    assert pair["family_accuracy"]["blur"]["mean"] == pytest.approx(0.02)
    # the drop (clean − corrupted) shrinks with momentum here: momentum helps more under shift
    drop = pair["accuracy_drop"]
    assert drop["mean"] < 0 and drop["status"] in ("lower", "within noise")
    assert "namex-full-mom - smoe" not in summary["paired_differences"]  # smoe did not run
    table = format_table(summary)
    assert "| method | noise acc (%) | blur acc (%) | weather acc (%) | digital acc (%) |" in table
    assert "| namex-full-mom - namex-full | 2 |" in table
    assert "Δ drop (points)" in table and "Δ noise (points)" in table
