"""White-box attacks for empirical robustness: projected gradient descent (PGD, Madry et al., 2018) in the
L-infinity or L2 ball, with the cross-entropy or the Carlini-Wagner margin as the loss, and FGSM (one signed
gradient step). Deng23 reports PGD-20 and CW (PGD on the CW margin) at L-infinity epsilon 8/255.

Every attack works on a batch at once and returns inputs within its ball around ``x`` and in [0, 1]. The model it
sees maps inputs to class probabilities (an ensemble through its aggregator), so the losses are written on
log-probabilities: for a softmax model they equal those on logits up to a per-input constant.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from ensemblecert import Attack, ProbabilityModel, hookimpl
from ensemblecert.validators import in_range, one_of

#: Probabilities below this are clipped before the log, so losses stay finite on saturated members.
TINY = 1e-12


def cross_entropy(probs: Tensor, y: Tensor) -> Tensor:
    """``-log p_y`` per input."""
    return -torch.log(probs.gather(1, y[:, None])[:, 0].clamp_min(TINY))


def cw_margin(probs: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin on log-probabilities per input: ``max_{j != y} log p_j - log p_y`` (positive when
    misclassified)."""
    logp = torch.log(probs.clamp_min(TINY))
    true = logp.gather(1, y[:, None])[:, 0]
    other = logp.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return other - true


LOSSES = {"ce": cross_entropy, "cw": cw_margin}


def _view(norms: Tensor, like: Tensor) -> Tensor:
    return norms.view(-1, *([1] * (like.dim() - 1)))


def project(delta: Tensor, norm: str, epsilon: float) -> Tensor:
    """``delta`` projected, input by input, onto the ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    lengths = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * _view((epsilon / lengths).clamp(max=1.0), delta)


def ascent_step(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit ``norm``: the sign for L-infinity, the normalised gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _view(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def random_start(x: Tensor, norm: str, epsilon: float, generator: torch.Generator | None) -> Tensor:
    """A uniform point of the L-infinity ball, or a point of the L2 ball at a uniform random radius."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) if norm == "linf" else None
    if norm == "linf":
        return (2 * noise - 1) * epsilon
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) * epsilon
    return ascent_step(direction, "l2") * _view(radius, x)


def pgd(
    model: ProbabilityModel,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    epsilon: float,
    steps: int,
    step_size: float,
    loss: str = "ce",
    start: Tensor | None = None,
) -> Tensor:
    """Projected gradient ascent on ``loss`` within the ``norm`` ball around ``x``, kept in [0, 1]; returns
    ``x + delta`` (detached). ``start`` is the initial ``delta`` (zero when absent)."""
    objective = LOSSES[loss]
    delta = torch.zeros_like(x) if start is None else start.detach().clone()
    delta = (x + project(delta, norm, epsilon)).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(objective(model(x + delta), y).sum(), delta)
        delta = project(delta.detach() + step_size * ascent_step(grad, norm), norm, epsilon)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


@attrs.frozen
class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018): ``steps`` steps of ``step_size`` in the ``norm`` ball of
    radius ``epsilon`` (L-infinity by default, 8/255), from a random start, on the cross-entropy or the CW margin."""

    norm: str = attrs.field(default="linf", validator=one_of(["linf", "l2"]))
    epsilon: float = attrs.field(default=8 / 255, validator=in_range(0, low_open=True))
    steps: int = attrs.field(default=20, validator=in_range(1))
    step_size: float | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(0, low_open=True)))
    random_start: bool = True
    loss: str = attrs.field(default="ce", validator=one_of(list(LOSSES)))

    def size(self) -> float:
        """The step size: as given, or ``2.5 epsilon / steps`` (Madry et al.'s rule)."""
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps

    def perturb(
        self, model: ProbabilityModel, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        start = random_start(x, self.norm, self.epsilon, generator) if self.random_start else None
        return pgd(
            model,
            x,
            y,
            norm=self.norm,
            epsilon=self.epsilon,
            steps=self.steps,
            step_size=self.size(),
            loss=self.loss,
            start=start,
        )


@attrs.frozen
class FGSM(Attack):
    """The fast gradient sign method (Goodfellow et al., 2015): one step of ``epsilon`` along the sign of the
    cross-entropy's gradient (L-infinity)."""

    norm: ClassVar[str] = "linf"
    epsilon: float = attrs.field(default=8 / 255, validator=in_range(0, low_open=True))

    def perturb(
        self, model: ProbabilityModel, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        return pgd(model, x, y, norm="linf", epsilon=self.epsilon, steps=1, step_size=self.epsilon)


@hookimpl
def register_attacks(register):
    register("pgd", PGD)
    register("fgsm", FGSM)
