"""Predictable scaling: fit a loss law to a ladder of small runs and predict a larger one.

    L(C)    = a·C^b + c                      compute C in FLOPs; b < 0; c the loss no compute
                                             removes (Kaplan et al. 2020; GPT-4's report)
    L(N, D) = E + A/N^α + B/D^β              N parameters, D training tokens
                                             (Hoffmann et al. 2022, "Chinchilla")

Both are fitted by least squares on log loss, Σ (log Lᵢ − log L̂ᵢ)², with scipy's
trust-region least_squares from several starting points (C, N and D are divided by their
geometric means first, so the numbers stay near 1). Confidence intervals come from the
residual bootstrap: refit on L̂ᵢ·exp(r*ᵢ), with r* drawn from the fit's log residuals
(scaled by √(n/(n−p)) for the p parameters fitted), and read the 2.5th and 97.5th
percentiles of every parameter and prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmforge.errors import ConfigError

Law = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (parameters, inputs (n, k)) → loss (n,)


def _power(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    log_a, b, log_c = theta  # x: (n, 1) normalised compute
    return np.exp(log_a) * x[:, 0] ** b + np.exp(log_c)


def _chinchilla(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    log_e, log_a, alpha, log_b, beta = theta  # x: (n, 2) normalised N, D
    return np.exp(log_e) + np.exp(log_a) * x[:, 0] ** -alpha + np.exp(log_b) * x[:, 1] ** -beta


def _least_squares(law: Law, x: np.ndarray, loss: np.ndarray, starts: list, bounds) -> np.ndarray:
    from scipy.optimize import least_squares

    def residual(theta: np.ndarray) -> np.ndarray:
        return np.log(law(theta, x)) - np.log(loss)

    best = None
    for start in starts:
        fit = least_squares(residual, start, bounds=bounds, xtol=1e-15, ftol=1e-15, gtol=1e-15)
        if best is None or fit.cost < best.cost:
            best = fit
    return best.x


@dataclass
class Fit:
    """A fitted law: its parameters (original units), their intervals and the bootstrap."""

    form: str  # "L(C)" or "L(N,D)"
    names: list[str]  # parameter names, in `params` order
    params: list[float]  # point estimates
    scale: list[float]  # the inputs' normalisers (geometric means)
    theta: list[float]  # the fitted internal parameters (log-coefficients, exponents)
    samples: list[list[float]] = field(default_factory=list)  # bootstrap thetas
    rmse: float = 0.0  # root mean square of the log residuals

    def law(self) -> Law:
        return _power if self.form == "L(C)" else _chinchilla

    def predict(self, *inputs: float) -> float:
        x = np.asarray([inputs], dtype=np.float64) / np.asarray(self.scale)
        return float(self.law()(np.asarray(self.theta), x)[0])

    def interval(self, *inputs: float, level: float = 0.95) -> tuple[float, float]:
        """The bootstrap interval of the prediction at `inputs`."""
        if not self.samples:
            value = self.predict(*inputs)
            return value, value
        x = np.asarray([inputs], dtype=np.float64) / np.asarray(self.scale)
        values = [float(self.law()(np.asarray(t), x)[0]) for t in self.samples]
        tail = 100 * (1 - level) / 2
        return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))

    def param_intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        if not self.samples:
            return {n: (v, v) for n, v in zip(self.names, self.params)}
        values = np.asarray([_to_params(self.form, t, self.scale) for t in self.samples])
        tail = 100 * (1 - level) / 2
        lo, hi = np.percentile(values, tail, axis=0), np.percentile(values, 100 - tail, axis=0)
        return {n: (float(a), float(b)) for n, a, b in zip(self.names, lo, hi)}


def _to_params(form: str, theta: Sequence[float], scale: Sequence[float]) -> list[float]:
    """Internal parameters → the law's own: coefficients in the inputs' original units."""
    if form == "L(C)":
        log_a, b, log_c = theta
        return [math.exp(log_a) * scale[0] ** -b, b, math.exp(log_c)]
    log_e, log_a, alpha, log_b, beta = theta
    return [
        math.exp(log_e),
        math.exp(log_a) * scale[0] ** alpha,
        alpha,
        math.exp(log_b) * scale[1] ** beta,
        beta,
    ]


def _starts(form: str, x: np.ndarray, loss: np.ndarray) -> list[np.ndarray]:
    """Starting points: for L(C), c on a grid with log(L − c) = log a + b·log C solved
    linearly; for L(N, D), a small grid of exponents and floors."""
    low = float(loss.min())
    if form == "L(C)":
        starts = []
        for c in np.linspace(0.0, 0.95, 12) * low:
            b, log_a = np.polyfit(np.log(x[:, 0]), np.log(loss - c), 1)
            starts.append(np.array([log_a, min(b, -1e-3), math.log(max(c, 1e-3 * low))]))
        return starts
    return [
        np.array([math.log(e * low), math.log(0.3 * low), alpha, math.log(0.3 * low), beta])
        for e in (0.5, 0.8)
        for alpha in (0.2, 0.5)
        for beta in (0.2, 0.5)
    ]


BOUNDS = {
    "L(C)": ([-50, -3.0, -50], [50, 0.0, 50]),
    "L(N,D)": ([-50, -50, 0.0, -50, 0.0], [50, 50, 3.0, 50, 3.0]),
}
NAMES = {"L(C)": ["a", "b", "c"], "L(N,D)": ["E", "A", "alpha", "B", "beta"]}


def fit_law(
    form: str, inputs: np.ndarray, loss: Sequence[float], bootstrap: int = 1000, seed: int = 0
) -> Fit:
    """Fit `form` ("L(C)": inputs (n,) compute; "L(N,D)": inputs (n, 2)) to the losses."""
    x = np.asarray(inputs, dtype=np.float64).reshape(len(loss), -1)
    y = np.asarray(loss, dtype=np.float64)
    p = len(NAMES[form])
    if len(y) <= p or np.any(y <= 0) or np.any(x <= 0):
        raise ConfigError(
            f"fitting {form} needs more than {p} runs with positive inputs and losses; "
            f"got {len(y)}",
            fix="train more sizes with lmforge scaling run",
        )
    scale = np.exp(np.log(x).mean(axis=0))
    x = x / scale
    law = _power if form == "L(C)" else _chinchilla
    theta = _least_squares(law, x, y, _starts(form, x, y), BOUNDS[form])
    fitted = law(theta, x)
    residuals = (np.log(y) - np.log(fitted)) * math.sqrt(len(y) / (len(y) - p))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        resampled = fitted * np.exp(rng.choice(residuals, len(y)))
        samples.append(_least_squares(law, x, resampled, [theta], BOUNDS[form]).tolist())
    return Fit(
        form=form,
        names=NAMES[form],
        params=_to_params(form, theta, scale),
        scale=scale.tolist(),
        theta=theta.tolist(),
        samples=samples,
        rmse=float(np.sqrt(np.mean((np.log(y) - np.log(fitted)) ** 2))),
    )


def compute_optimal_tokens(params: int, tokens_per_parameter: float) -> int:
    """D = r·N (Hoffmann et al. 2022 find r ≈ 20 at their scales)."""
    return int(round(tokens_per_parameter * params))
