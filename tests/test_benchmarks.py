"""The benchmark scripts' core functions on tiny configurations: numbers that could be wrong
(inclusions between certifiers, exact methods agreeing, fitted slopes), never timings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import (cost_vs_size, ibp_trained_vs_plain, relaxed_tightness,  # noqa: E402
                        zoo_tightness)
from benchmarks.reporting import check_records, loglog_slope  # noqa: E402

pytest.importorskip("sklearn")  # cost_vs_size trains its models with models/train.py


def _counts(rows, key):
    return {r["method"]: r[key] for r in rows}


def test_loglog_slope_recovers_the_exponent():
    n = np.array([16, 32, 64, 128, 256])
    assert loglog_slope(n, 3e-4 * n ** 1.5) == pytest.approx(1.5)
    assert loglog_slope(n, np.full(5, 0.01)) == pytest.approx(0.0, abs=1e-12)
    assert loglog_slope([64], [0.1]) is None


def test_check_records_flags_contradictions():
    def rec(method, status, lower, upper, index=0):
        return {"model": "m", "eps": 0.1, "index": index, "method": method, "status": status,
                "worst_margin_lower": lower, "worst_margin_upper": upper}

    fine = [rec("ibp", "MAYBE", -1.0, 2.0), rec("crown", "YES", 0.5, 2.0),
            rec("attack", "MAYBE", -np.inf, 1.0)]
    assert check_records(fine, (("ibp", "crown"),)) == []
    assert len(check_records(fine + [rec("milp", "NO", -np.inf, -0.1)])) == 2  # YES/NO, lo > up
    assert len(check_records(fine, (("crown", "ibp"),))) == 1


def test_forward_pass_equivalents_counts_what_crown_proves(digits_mlp_path, digits_test):
    """The cost figure's 'proved' counts match the certifiers' own YES counts, and its ratios and
    operation counts are positive, CROWN's above CROWN-IBP's and above the forward pass's."""
    import verify

    digits_mlp = verify.load_onnx(digits_mlp_path)
    xs, ys = digits_test[0][:20], digits_test[1][:20]
    cost = relaxed_tightness.forward_pass_equivalents(digits_mlp, xs, ys, 0.03, "cpu", repeats=3)
    for proved, options in zip(cost["proved"], ({}, {"intermediate": "ibp"})):
        certs = verify.certify_batch(digits_mlp, xs, ys, 0.03, "inf", "crown", (0.0, 1.0),
                                     **options)
        assert proved == sum(c.status == verify.Status.YES for c in certs)
    assert cost["proved"][0] > cost["proved"][1]  # full CROWN proves more on these 20
    assert 0 < cost["crown_ibp_equivalents"] < cost["forward_pass_equivalents"]
    low, high = cost["fpe_range"]
    assert low <= cost["forward_pass_equivalents"] <= high
    assert 0 < cost["torch_ops"][0] < cost["torch_ops"][1]
    # arithmetic: 2 rows per CROWN-bounded neuron through the 64 x 50 layer, 9 margin rows
    # through 64-50-50-10 (6,200 multiply-adds, one forward pass each)
    neurons = cost["crown_neurons_per_input"]
    assert 0 < neurons <= cost["crown_neurons_most"] <= 50
    assert cost["arithmetic_fpe"] == pytest.approx((2 * neurons * 3200 + 9 * 6200) / 6200)
    assert cost["arithmetic_fpe_padded"] == pytest.approx(
        (2 * cost["crown_neurons_most"] * 3200 + 9 * 6200) / 6200)


def test_cost_vs_size_inclusions_on_two_tiny_mlps(digits_test):
    xs, ys = digits_test[0][:12], digits_test[1][:12]
    deterministic = torch.are_deterministic_algorithms_enabled()
    rows, records = cost_vs_size.measure([("width", (16, 16)), ("depth", (16,))], xs, ys, 0.03,
                                         milp_timeout=20.0, epochs=10, progress=lambda s: None)
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # restored
    assert {r["architecture"] for r in rows} == {"64-16-16-10", "64-16-10"}
    for arch in ("64-16-16-10", "64-16-10"):
        sel = [r for r in rows if r["architecture"] == arch]
        yes, no = _counts(sel, "yes"), _counts(sel, "no")
        assert yes["ibp"] <= yes["crown"] <= yes["alpha-crown"]
        assert yes["crown"] <= yes["lp"] <= yes["milp"]
        assert yes["milp"] + no["attack"] <= len(xs)
        assert _counts(sel, "timeouts")["milp"] == 0
        # exact with no timeouts: every input decided; the attack never refutes more than exist
        assert yes["milp"] + no["milp"] == len(xs) and no["attack"] <= no["milp"]
        assert yes["attack"] == 0
    assert check_records(records, cost_vs_size.ORDER) == []
    k = cost_vs_size.slopes(rows)
    assert set(k) == {(f, m) for f in ("width", "depth") for m in cost_vs_size.METHODS}
    assert all(v is None for v in k.values())  # one size per family: no fit


@pytest.mark.slow
def test_ibp_trained_vs_plain_on_eight_digits(digits_test):
    assert ibp_trained_vs_plain.same_architecture("digits_mlp_plain", "digits_mlp_ibp")
    assert not ibp_trained_vs_plain.same_architecture("digits_mlp_large", "digits_mlp_ibp")
    xs, ys = digits_test[0][:8], digits_test[1][:8]
    names = ("digits_mlp_plain", "digits_mlp_ibp")
    rows, records = ibp_trained_vs_plain.certified_accuracy(
        names, xs, ys, [0.05], ("ibp", "crown", "milp", "attack"), milp_timeout=30.0)
    acc = {(r["model"], r["method"]): r["certified_accuracy"] for r in rows}
    clean = {r["model"]: r["clean_accuracy"] for r in rows}
    for name in names:
        assert acc[(name, "ibp")] <= acc[(name, "crown")] <= acc[(name, "milp")] \
            <= acc[(name, "attack")] <= clean[name]
    # trained for it at this eps: IBP proves most of these digits, none on the plain model
    assert acc[("digits_mlp_ibp", "ibp")] >= 0.75 and acc[("digits_mlp_plain", "ibp")] == 0.0
    assert check_records(records, (("ibp", "crown"), ("crown", "milp"))) == []


def test_zoo_tightness_exact_methods_agree_on_toy2d():
    rows, records = zoo_tightness.run_model("toy2d", 12, [0.1], milp_timeout=30.0)
    by = {r["method"]: r for r in rows}
    assert "bab" in by  # 2 inputs: branch and bound applies
    assert by["milp"]["maybe"] == 0 and by["bab"]["maybe"] == 0
    assert (by["milp"]["yes"], by["milp"]["no"]) == (by["bab"]["yes"], by["bab"]["no"])
    assert 0 < by["milp"]["yes"] < 12  # eps 0.1 is where some hold and some fail
    assert by["attack"]["no"] <= by["milp"]["no"]
    assert zoo_tightness.exact_disagreements(records) == []
    assert check_records(records, zoo_tightness.ORDER) == []
