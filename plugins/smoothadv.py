"""SmoothAdv (Salman et al., 2019) as 000_aea2a03b72c2b28c.txt, App. F configures it: adversarial training of the
smoothed classifier.

For each clean input ``x`` an L2 PGD attack looks for ``x' = x + delta``, ``||delta|| <= epsilon``, that maximises
the loss of the *soft* smoothed classifier estimated with the batch's ``m`` noise samples,
``-log((1/m) sum_k softmax(f(x' + eps_k))[y])``, with the noise drawn once and kept through the attack's steps
(App. F: 10 steps, epsilon 1.0). Each member then trains on cross-entropy at ``x' + eps_k``, the same noise.

Alone, every member is attacked through its own smoothed classifier with its own noise, as the baseline trains
each base model. With regularizers (DRT + SmoothAdv), the attack targets the smoothed *ensemble* (the members'
mean softmax), one ``x'`` for all members, and the regularizers' terms (DRT's GD and CM) are evaluated at the same
noisy adversarial inputs ``x' + eps`` the cross-entropy trains on.

The paper gives neither the step size nor a warm-up: the step size defaults to ``2 epsilon / steps`` (so the
attack can cross the ball), and ``warmup`` epochs (default 0) ramp epsilon linearly from ``epsilon / warmup``
(001_94e5826843c1fbd1.txt trains with epsilon 512/255 and 10 warm-up epochs; set them so to follow it).
Members are attacked in evaluation mode (batch-norm on running statistics), then trained in training mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ensemblecert import BaseLoss, TrainBatch, hookimpl
from ensemblecert.validators import in_range


def smoothed_loss(probs: Tensor, y: Tensor, copies: int) -> Tensor:
    """``-log`` of the mean over ``copies`` noise samples of the class-``y`` probability, per clean input.

    ``probs`` ``[copies * B, K]`` are softmax outputs on the noisy copies (copy ``k`` of the batch at rows
    ``k B .. (k + 1) B``), ``y`` ``[B]`` the labels.
    """
    mean = probs.reshape(copies, -1, probs.shape[-1]).mean(dim=0)
    return -torch.log(mean.gather(1, y[:, None])[:, 0].clamp_min(1e-12))


def project_l2(delta: Tensor, epsilon: float) -> Tensor:
    """``delta`` scaled back, input by input, onto the L2 ball of radius ``epsilon``."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (epsilon / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))


def pgd_l2(
    loss: Callable[[Tensor], Tensor], x: Tensor, *, epsilon: float, steps: int, step_size: float
) -> Tensor:
    """Maximise ``loss(x + delta).sum()`` over ``||delta||_2 <= epsilon`` (per input) with ``x + delta`` in [0, 1]:
    ``steps`` normalised-gradient ascent steps of length ``step_size``, each projected. Returns ``x + delta``."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(x + delta).sum(), delta)
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = project_l2(delta.detach() + step_size * grad / norms, epsilon)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


class _evaluating:
    """Put members in evaluation mode for the attack, then back in the modes they were in."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        self.members = members

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.members]
        for m in self.members:
            m.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in zip(self.members, self.modes):
            m.train(mode)


@attrs.frozen
class SmoothAdv(BaseLoss):
    """SmoothAdv (Salman et al., 2019; 000 App. F): cross-entropy at noisy L2-PGD adversarial examples of the soft
    smoothed classifier (``steps`` steps, radius ``epsilon``), summed over members."""

    epsilon: float = attrs.field(default=1.0, validator=in_range(0, low_open=True))
    steps: int = attrs.field(default=10, validator=in_range(1))
    step_size: float | None = attrs.field(default=None, validator=attrs.validators.optional(in_range(0, low_open=True)))
    warmup: int = attrs.field(default=0, validator=in_range(0))

    def radius(self, epoch: int) -> float:
        """Epsilon at ``epoch`` (0-based): ramped linearly over the ``warmup`` epochs."""
        if self.warmup == 0:
            return self.epsilon
        return self.epsilon * min(1.0, (epoch + 1) / self.warmup)

    def attack(self, batch: TrainBatch, members: Sequence[nn.Module], noise: Tensor) -> Tensor:
        """Adversarial examples ``x'`` ``[B, ...]`` against the smoothed average of ``members`` under ``noise``."""
        epsilon = self.radius(batch.epoch)
        step = self.step_size if self.step_size is not None else 2 * epsilon / self.steps

        def loss(x_adv: Tensor) -> Tensor:
            noisy = batch.repeated(x_adv) + noise
            probs = torch.stack([m(noisy).softmax(dim=-1) for m in members]).mean(dim=0)
            return smoothed_loss(probs, batch.y, batch.copies)

        with _evaluating(batch.members):
            return pgd_l2(loss, batch.x, epsilon=epsilon, steps=self.steps, step_size=step)

    def terms(self, batch: TrainBatch) -> dict[str, Tensor]:
        noise = batch.noise_draws()
        if batch.shared:
            batch.centres = batch.repeated(self.attack(batch, batch.members, noise[0]))
        else:
            batch.centres = [
                batch.repeated(self.attack(batch, [m], n)) for m, n in zip(batch.members, noise)
            ]
        y = batch.targets()
        return {"adv_ce": sum((F.cross_entropy(logits, y) for logits in batch.logits()), batch.x.new_zeros(()))}


@hookimpl
def register_losses(register):
    register("smoothadv", SmoothAdv)
