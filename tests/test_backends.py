"""The registry: make_options refuses every bad option value up front (types, CHOICES, device),
and each method's NORMS are one declaration that the registry and the method's own run share."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_mlp
from verify import InputError
from verify.backends import check_norm, get_backend, make_options
from verify.bounds.lp import LPOptions
from verify.bounds.lp import certify as lp_certify
from verify.exact.bab import BaBOptions
from verify.exact.bab import certify as bab_certify
from verify.spec import NORMS, robustness_spec


@pytest.mark.parametrize("method, options, expected", [
    ("alpha-crown", {"steps": True}, "option steps of method 'alpha-crown' takes an integer, "
                                     "got True"),
    ("alpha-crown", {"lr": False}, "takes a number, got False"),
    ("bab", {"timeout": True}, "takes a number, got True"),
    ("attack", {"step_size": True}, "takes a number, got True"),
    ("bab", {"bounds": "foo"}, "option bounds of method 'bab' must be one of crown, ibp, "
                               "got 'foo'"),
    ("attack", {"dtype": "float16"}, "must be one of auto, float32, float64, got 'float16'"),
    ("lp", {"bounds": "exact"}, "must be one of ibp, crown, got 'exact'"),
    ("milp", {"bounds": "exact"}, "option bounds of method 'milp' must be one of ibp, crown"),
    ("smoothing", {"sigma": 0.25, "dtype": "float16"}, "must be one of float32, float64"),
    ("smoothing", {"sigma": 0.25, "radius_method": "guess"},
     "must be one of auto, closed, numerical"),
    ("crown", {"device": "cuda:99"}, "CUDA device"),  # refused with or without CUDA
    ("ibp", {"device": "tpu"}, "unknown device 'tpu'"),
])
def test_make_options_refuses_bad_values_before_anything_runs(method, options, expected):
    with pytest.raises(InputError) as error:
        make_options(method, options)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_direct_callers_meet_the_same_choices():
    """Certifiers called with an options object (no make_options) check the same CHOICES."""
    net = random_mlp(np.random.default_rng(0), [2, 4, 2])
    spec = robustness_spec(2, 2, np.zeros(2), 0, 0.1)
    for run, options in ((bab_certify, BaBOptions(bounds="foo")),
                         (lp_certify, LPOptions(bounds="foo"))):
        with pytest.raises(InputError, match="must be one of"):
            run(net, [spec], options)


@pytest.mark.parametrize("method", ["milp", "bab"])
def test_norms_are_declared_once_for_registry_and_run(method):
    """A norm the method's NORMS leave out is refused by check_norm (compare, demo and plot2d,
    before anything runs) and by the method's own run."""
    backend = get_backend(method)
    refused = [n for n in NORMS if n not in backend.norms]
    assert refused and backend.norms  # milp: l_2; bab: l_2 and l_1
    net = random_mlp(np.random.default_rng(0), [2, 4, 2])
    for norm in refused:
        with pytest.raises(InputError, match=f"takes .* balls only, not l_{norm}"):
            check_norm(method, norm)
        spec = robustness_spec(2, 2, np.zeros(2), 0, 0.1, norm)
        with pytest.raises(InputError, match=f"l_{norm}"):
            backend.run(net, [spec], make_options(method, {}))
    for norm in backend.norms:
        check_norm(method, norm)
    assert get_backend("crown").norms == NORMS


def test_numpy_bools_are_taken_as_bools():
    """numpy ints and floats are accepted for numbers; numpy bools likewise for flags."""
    made = make_options("alpha-crown", {"early_stop": np.bool_(False), "steps": np.int64(3)})
    assert made.early_stop is False and made.steps == 3
