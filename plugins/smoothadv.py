"""SmoothAdv (Salman et al., 2019) as Yang22, App. F configures it: adversarial training of the
smoothed classifier.

For each clean input ``x`` an attack (an attack component; L2 PGD by default) looks for ``x' = x + delta``,
``||delta|| <= epsilon``, that maximises the loss of the *soft* smoothed classifier estimated with the batch's ``m``
noise samples,
``-log((1/m) sum_k softmax(f(x' + eps_k))[y])``, with the noise drawn once and kept through the attack's steps
(App. F: 10 steps, epsilon 1.0). Each member then trains on cross-entropy at ``x' + eps_k``, the same noise.

Alone, every member is attacked through its own smoothed classifier with its own noise, as the baseline trains
each base model. With regularizers (DRT + SmoothAdv), the attack targets the smoothed *ensemble* (the members'
mean softmax), one ``x'`` for all members, and the regularizers' terms (DRT's GD and CM) are evaluated at the same
noisy adversarial inputs ``x' + eps`` the cross-entropy trains on.

The paper gives neither the step size nor a warm-up: the default attack takes steps of ``2 epsilon / steps`` = 0.2
(so it can cross the ball), and ``warmup`` epochs (default 0) ramp epsilon (and the step) linearly from
``epsilon / warmup`` (Horvath22 trains with epsilon 512/255 and 10 warm-up epochs; set them so to
follow it). The attack's cross-entropy on the smoothed probabilities is exactly the loss above. Members are
attacked in evaluation mode (batch-norm on running statistics), then trained in training mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ensemblecert import Attack, BaseLoss, TrainBatch, component_field, evaluation_mode, hookimpl
from ensemblecert.validators import in_range


def smoothed_probabilities(
    members: Sequence[nn.Module], noise: Tensor, copies: int, repeat: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    """The soft smoothed classifier of the members' average, estimated with the fixed ``noise``: points ``[B, ...]``
    to ``(1/m) sum_k mean_i softmax(f_i(x + eps_k))`` ``[B, C]``. Its cross-entropy is SmoothAdv's attack loss."""

    def model(points: Tensor) -> Tensor:
        noisy = repeat(points) + noise
        probs = torch.stack([m(noisy).softmax(dim=-1) for m in members]).mean(dim=0)
        return probs.reshape(copies, points.shape[0], -1).mean(dim=0)

    return model


@attrs.frozen
class SmoothAdv(BaseLoss):
    """SmoothAdv (Salman et al., 2019; Yang22 App. F): cross-entropy at noisy adversarial examples of the soft
    smoothed classifier, found by ``attack`` (L2 PGD, epsilon 1.0, 10 steps of 0.2, no random start), summed over
    members."""

    attack: Attack = component_field(
        "attack", {"name": "pgd", "norm": "l2", "epsilon": 1.0, "steps": 10, "step_size": 0.2, "random_start": False}
    )
    warmup: int = attrs.field(default=0, validator=in_range(0))

    def __attrs_post_init__(self) -> None:
        if self.warmup and not hasattr(self.attack, "epsilon"):
            raise ValueError("warmup ramps the attack's epsilon, and this attack has none; set warmup = 0")

    def scheduled(self, epoch: int) -> Attack:
        """The attack at ``epoch`` (0-based): epsilon (and a given step size) ramped linearly over ``warmup`` epochs."""
        if self.warmup == 0:
            return self.attack
        scale = min(1.0, (epoch + 1) / self.warmup)
        changes = {"epsilon": self.attack.epsilon * scale}
        if getattr(self.attack, "step_size", None) is not None:
            changes["step_size"] = self.attack.step_size * scale
        return attrs.evolve(self.attack, **changes)

    def radius(self, epoch: int) -> float:
        """Epsilon at ``epoch``."""
        return self.scheduled(epoch).epsilon

    def adversarial(self, batch: TrainBatch, members: Sequence[nn.Module], noise: Tensor) -> Tensor:
        """Adversarial examples ``x'`` ``[B, ...]`` against the smoothed average of ``members`` under ``noise``."""
        model = smoothed_probabilities(members, noise, batch.copies, batch.repeated)
        with evaluation_mode(nn.ModuleList(batch.members)):
            return self.scheduled(batch.epoch).perturb(model, batch.x, batch.y, generator=batch.generator)

    def terms(self, batch: TrainBatch) -> dict[str, Tensor]:
        noise = batch.noise_draws()
        if batch.shared:
            batch.centres = batch.repeated(self.adversarial(batch, batch.members, noise[0]))
        else:
            batch.centres = [batch.repeated(self.adversarial(batch, [m], n)) for m, n in zip(batch.members, noise)]
        y = batch.targets()
        return {"adv_ce": sum((F.cross_entropy(logits, y) for logits in batch.logits()), batch.x.new_zeros(()))}


@hookimpl
def register_losses(register):
    register("smoothadv", SmoothAdv)
