"""``otmdr compare``: rho chosen on validation NLL, a resumable grid, the figure and the CSV."""

import csv
import json

import pytest
from PIL import Image

from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.cli.compare import markdown_table, select_rho
from pyro_otmdr.experiments.cli.parser import UsageError


def _row(guide, method, rho, seed, val_nll, nll):
    metrics = {"accuracy": 0.9, "nll": nll, "brier": 0.1, "ece": 0.02, "step_ms": 1.0}
    return {
        "guide": guide,
        "method": method,
        "rho": rho,
        "seed": seed,
        "val_nll": val_nll,
        **metrics,
    }


PLANTED = [
    # rho 0.02 is best on validation; rho 0.05 would be best on test: the table must show 0.02
    *(_row("delta", "otmdr", 0.02, s, val_nll=0.10, nll=0.30) for s in (0, 1)),
    *(_row("delta", "otmdr", 0.05, s, val_nll=0.20, nll=0.05) for s in (0, 1)),
    *(_row("delta", "svi", None, s, val_nll=0.15, nll=0.20) for s in (0, 1)),
]


def test_rho_is_chosen_by_validation_nll_not_test_nll():
    assert select_rho(PLANTED) == {
        ("delta", "otmdr", "none", "global"): 0.02,
        ("delta", "svi", "none", "global"): None,
    }
    table = markdown_table(PLANTED, ["delta"], ["svi", "otmdr"])
    assert "| delta | otmdr | 0.02 | 0.9000 ± 0.0000 | 0.3000 ± 0.0000 |" in table
    assert "0.05" not in table
    every = markdown_table(PLANTED, ["delta"], ["svi", "otmdr"], every_rho=True)
    assert "| delta | otmdr | 0.02* |" in every and "| delta | otmdr | 0.05 |" in every
    assert "| delta | svi | - |" in every and every.count("*") == 1


def test_several_radii_without_validation_are_refused():
    rows = [{k: v for k, v in r.items() if k != "val_nll"} for r in PLANTED]
    with pytest.raises(UsageError, match="validation split"):
        select_rho(rows)


TINY = ["--epochs", "1", "--hidden", "16", "--num-samples", "2", "--device", "cpu"]


def test_compare_grid_over_rho_resumes_and_writes_figure_and_csv(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--guides", "delta", "--methods", "svi,sam", "--seeds", "2"]
    argv += ["--rho", "0.01,0.05", "--shift", "contrast", "--severity", "2", *TINY]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("(trained)") == 6  # svi x 2 seeds + sam x 2 rho x 2
    runs = json.loads((out / "runs.json").read_text())
    chosen = select_rho(runs)[("delta", "sam", "none", "global")]
    results = (out / "results.md").read_text()
    assert f"| delta | sam | {chosen:g} |" in results and f"{chosen:g}* |" in results
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"val_nll", "shift_nll", "shift_ece"} <= set(rows[0])
    with Image.open(out / "compare.png") as image:
        assert image.size[0] > 4 * image.size[1] / 2  # one panel per metric, side by side

    (out / "runs" / "delta-sam-rho0.05-seed1.json").unlink()  # as if stopped before this run
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("(kept from an earlier run)") == 5 and printed.count("(trained)") == 1
    timings = ("step_ms", "step_s", "train_seconds", "seconds")
    untimed = [[{k: v for k, v in r.items() if k not in timings} for r in rows]
               for rows in (runs, json.loads((out / "runs.json").read_text()))]  # fmt: skip
    assert untimed[0] == untimed[1]  # the retrained run is the same run (seeded)
