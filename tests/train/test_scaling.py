"""Scaling-law fits recover known parameters from synthetic points."""

import numpy as np
import pytest

from lmforge.errors import ConfigError
from lmforge.train.scaling import fit_law


def test_the_compute_law_recovers_a_b_c_within_one_percent():
    a, b, c = 38.0, -0.12, 1.7
    compute = np.geomspace(1e11, 3e13, 6)
    loss = a * compute**b + c
    fit = fit_law("L(C)", compute, loss, bootstrap=50)
    for got, want in zip(fit.params, (a, b, c)):
        assert abs(got - want) <= 0.01 * abs(want), (fit.params, (a, b, c))
    assert abs(fit.predict(3e14) - (a * 3e14**b + c)) < 1e-6
    lo, hi = fit.interval(3e14)
    assert lo <= fit.predict(3e14) <= hi and hi - lo < 1e-3  # exact points: a narrow interval


def test_the_interval_covers_a_noisy_ladder_and_widens_with_noise():
    a, b, c = 38.0, -0.12, 1.7
    compute = np.geomspace(1e11, 3e12, 5)
    noise = np.random.default_rng(0).normal(0, 0.01, 5)
    loss = (a * compute**b + c) * np.exp(noise)
    fit = fit_law("L(C)", compute, loss, bootstrap=300)
    lo, hi = fit.interval(3e13)
    truth = a * 3e13**b + c
    assert lo < truth < hi and hi - lo > 0.01
    bounds = fit.param_intervals()
    assert bounds["b"][0] < fit.params[1] < bounds["b"][1]


def test_the_chinchilla_law_recovers_its_parameters():
    E, A, alpha, B, beta = 1.6, 400.0, 0.34, 900.0, 0.28
    N, D = np.meshgrid(np.geomspace(3e4, 1e6, 4), np.geomspace(1e6, 3e7, 4))
    N, D = N.ravel(), D.ravel()
    loss = E + A / N**alpha + B / D**beta
    fit = fit_law("L(N,D)", np.stack([N, D], 1), loss, bootstrap=20)
    for got, want in zip(fit.params, (E, A, alpha, B, beta)):
        assert abs(got - want) <= 0.01 * abs(want), (fit.params, (E, A, alpha, B, beta))


def test_too_few_points_are_refused():
    with pytest.raises(ConfigError, match="more than 3 runs"):
        fit_law("L(C)", [1e10, 1e11, 1e12], [3.0, 2.8, 2.7])
