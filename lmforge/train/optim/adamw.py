"""The AdamW update shared by the memory-saving optimizers, op for op as torch.optim.AdamW.

    θ ← θ·(1 − ηλ);  m ← m + (1 − β1)(g − m);  v ← β2·v + (1 − β2)·g²
    θ ← θ − η/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)

`adamw_update_` issues exactly the tensor ops of torch's single-tensor AdamW (the path it takes
on CPU), in the same order and with the same Python-float scalars, so an optimizer that feeds
it fp32 moments reproduces torch.optim.AdamW bit for bit. Every op is elementwise, so it may be
applied to slices of a parameter (PagedAdamW does, one page at a time).

`AdamWBase` is the `torch.optim.Optimizer` scaffolding both optimizers share: AdamW's
constructor and checks, the step loop (closure, sparse check, `step` counter), and a
`load_state_dict` that keeps each state tensor's dtype (uint8 codes must stay uint8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lmforge.errors import ConfigError

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


@dataclass(frozen=True)
class Hyper:
    """One parameter group's AdamW hyper-parameters as Python floats."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    @classmethod
    def of(cls, group: dict[str, Any]) -> Hyper:
        beta1, beta2 = group["betas"]
        return cls(
            float(group["lr"]), float(beta1), float(beta2), group["eps"], group["weight_decay"]
        )


def adamw_update_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float, h: Hyper
) -> None:
    """One AdamW update of `param`, `exp_avg` and `exp_avg_sq` in place (all the same shape)."""
    if h.weight_decay != 0:
        param.mul_(1 - h.lr * h.weight_decay)
    exp_avg.lerp_(grad, 1 - h.beta1)
    exp_avg_sq.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)
    bias_correction1 = 1 - h.beta1**step
    bias_correction2 = 1 - h.beta2**step
    step_size = h.lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(h.eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def step_dtype() -> torch.dtype:
    """The dtype torch.optim.AdamW gives its `step` counter (it follows the default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class AdamWBase(torch.optim.Optimizer):
    """AdamW's constructor and step loop; subclasses say how moments are stored and updated."""

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        checks = {
            "lr": (lr, float(lr) >= 0),
            "eps": (eps, eps >= 0),
            "betas[0]": (betas[0], 0 <= betas[0] < 1),
            "betas[1]": (betas[1], 0 <= betas[1] < 1),
            "weight_decay": (weight_decay, weight_decay >= 0),
        }
        for name, (value, ok) in checks.items():
            if not ok:
                raise ConfigError(
                    f"{type(self).__name__}: {name}={value} is out of range "
                    "(lr, eps, weight_decay >= 0; 0 <= betas < 1)"
                )
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    # ------------------------------------------------------------ what subclasses provide

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(self, param: Tensor, grad: Tensor, state: dict[str, Any], h: Hyper) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h = Hyper.of(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0, dtype=step_dtype())
                    self._init_state(p, state)
                state["step"] += 1
                self._update(p, p.grad, state, h)
        return loss

    # ------------------------------------------------------------ state

    def _reset_moments(self) -> None:
        """Forget moments kept outside `self.state` (called when a state_dict is loaded)."""

    def _load_entry(self, param: Tensor, entry: dict[str, Any]) -> None:
        """Install one parameter's saved state (tensors keep their dtype; moved to the param)."""
        self.state[param] = {
            key: value.detach().clone()
            if key == "step" or not isinstance(value, Tensor)
            else value.detach().to(param.device, copy=True)
            for key, value in entry.items()
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load `state_dict()`'s output; unlike torch, state tensors are not cast to the param."""
        saved = state_dict["state"]
        # torch's loader checks the groups and restores hyper-parameters; the state is ours.
        super().load_state_dict({**state_dict, "state": {}})
        self._reset_moments()
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entry in saved.items():
            self._load_entry(params[int(index)], entry)

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state (every state tensor)."""
        return sum(
            value.nbytes
            for state in self.state.values()
            for value in state.values()
            if isinstance(value, Tensor)
        )
