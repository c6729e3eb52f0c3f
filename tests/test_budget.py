"""What can I train for $X: the model, the config and a predicted val_bpb with its leave-one-out error, from a
scaling fit over the published records and this ledger's own runs on the same data."""
import json
import math

import pytest

from conftest import nl
from nanolaunch import scaling
from trainer.arithmetic import ModelShape


@pytest.mark.parametrize("budget", [100, 2500])
def test_a_budget_answers_with_a_model_a_config_and_a_prediction(tmp_path, budget):
    r = nl(tmp_path, "plan", "--budget", budget, "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    chosen, plan = b["chosen"], b["plan"]
    assert chosen["fits"] and plan["fits"] and plan["cost_usd"] <= budget
    assert (plan["depth"], plan["tokens_per_param"]) == (chosen["depth"], pytest.approx(chosen["ratio"], rel=1e-3))
    assert 0.5 < b["predicted_val_bpb"] < 1.1 and 0 < b["loo_error"] < 0.2
    assert b["predicted_val_bpb"] == pytest.approx(scaling.fit(b["points"]).predict(chosen["flops"]))
    # the most compute within the budget: every alternative buys less (or predicts no better)
    assert all(a["flops"] <= chosen["flops"] or a["ratio"] != 20 for a in b["alternatives"])


def test_more_money_buys_a_bigger_model_and_a_lower_prediction(tmp_path):
    small = json.loads(nl(tmp_path, "plan", "--budget", "100", "--json").stdout)
    large = json.loads(nl(tmp_path, "plan", "--budget", "2500", "--json").stdout)
    assert large["chosen"]["flops"] > 10 * small["chosen"]["flops"]
    assert large["predicted_val_bpb"] < small["predicted_val_bpb"]


def test_max_hours_bounds_the_answer(tmp_path):
    b = json.loads(nl(tmp_path, "plan", "--budget", "2500", "--max-hours", "10", "--json").stdout)
    assert b["plan"]["wall_hours"] <= 10 and b["plan"]["cost_usd"] <= 2500


def test_the_published_records_reproduce_their_flops():
    """The records' training FLOPs, recomputed from depth and tokens, are what the reports print."""
    flops = {p["depth"]: p["flops"] for p in scaling.published()}
    assert flops[10] == pytest.approx(1.872795e18, rel=1e-6)
    assert flops[20] == pytest.approx(3.917670e19, rel=1e-6)
    assert flops[34] == pytest.approx(1.265075e21, rel=1e-6)


def test_leave_one_out_predicts_each_budget_without_its_own_runs():
    law = scaling.fit(scaling.published())
    assert law.budgets == 3 and len(law.loo) == 3
    d34 = next(x for x in law.loo if x["flops"] > 1e21)
    # without d34, the least-squares line through d10 and the d20 runs' mean (in log-log) predicts it
    d10 = next(p for p in scaling.published() if p["depth"] == 10)
    d20 = [p for p in scaling.published() if p["depth"] == 20]
    x0, y0 = math.log(d10["flops"]), math.log(d10["val_bpb"])
    x1, y1 = math.log(d20[0]["flops"]), sum(math.log(p["val_bpb"]) for p in d20) / len(d20)
    slope = (y1 - y0) / (x1 - x0)
    assert d34["predicted"] == pytest.approx(math.exp(y1 + slope * (math.log(d34["flops"]) - x1)), rel=1e-9)
    assert d34["error"] == pytest.approx((d34["predicted"] - 0.7045) / 0.7045)
    with pytest.raises(ValueError, match="three or more compute budgets"):
        scaling.fit([p for p in scaling.published() if p["depth"] != 34])


def test_the_fit_learns_from_this_ledgers_runs(tmp_path):
    before = json.loads(nl(tmp_path, "plan", "--budget", "100", "--json").stdout)
    # a d26 run at ratio 20 that did far better than the published curve
    r = nl(tmp_path, "ledger", "add", "d26", "--gpu", "H100:8", "--batch", "16", "--wall-minutes", "600",
           "--cost", "320", "--val-bpb", "0.70", "--json")
    assert r.returncode == 0, r.stderr
    after = json.loads(nl(tmp_path, "plan", "--budget", "100", "--json").stdout)
    ledger = [p for p in after["points"] if p["kind"] == "ledger"]
    assert len(ledger) == 1 and ledger[0]["flops"] == pytest.approx(
        float(ModelShape(26).flops_per_token) * ModelShape(26).params // 524_288 * 524_288 * 20, rel=1e-3)
    assert after["fit"]["budgets"] == 4 and after["predicted_val_bpb"] < before["predicted_val_bpb"]


def test_the_plot_shows_points_curve_and_choice(tmp_path):
    png = tmp_path / "fit.png"
    r = nl(tmp_path, "plan", "--budget", "500", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*.tmp.png"))


@pytest.mark.parametrize("args, message", [
    (["d12", "--budget", "100"], "--budget chooses the model"),
    (["--budget", "0"], "must be a finite number in (0, ∞)"),
    (["--plot", "x.png"], "give --budget"),
    (["--budget", "0.01"], "nothing fits within $0.01"),
])
def test_bad_budget_requests_are_one_line(tmp_path, args, message):
    r = nl(tmp_path, "plan", *args)
    assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
