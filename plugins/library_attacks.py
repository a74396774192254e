"""AutoAttack (Croce and Hein, 2020) and the black-box Square attack (Andriushchenko et al., 2020) through
torchattacks, a maintained implementation: both are long, carefully tuned algorithms that are better reused
than rewritten. Deng23 reports AutoAttack and the black-box SignHunter at L-infinity 8/255;
Square, a score-based black-box attack in the same family, stands in for SignHunter here.

torchattacks is an optional dependency (``pip install "ensemblecert[attacks]"``): it pins an old ``requests``,
so it is not forced on users who do not need these attacks; a pipeline naming one without it installed stops
before any work with that advice. The model torchattacks sees returns log-probabilities as logits (the
ensemble's combined probabilities, logged), so its losses act on the combined prediction.
"""

from __future__ import annotations

import importlib.util

import attrs
import torch
from torch import Tensor, nn

from ensemblecert import Attack, ProbabilityModel, hookimpl
from ensemblecert.validators import in_range, one_of

INSTALL = 'torchattacks is not installed; pip install "ensemblecert[attacks]" (or torchattacks) to use this attack'


def available() -> bool:
    return importlib.util.find_spec("torchattacks") is not None


class LogProbabilities(nn.Module):
    """A probability model as the ``nn.Module`` torchattacks expects: log-probabilities as logits."""

    def __init__(self, model: ProbabilityModel, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)  # tells torchattacks the device

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(self.model(x).clamp_min(1e-12))


def _seed(generator: torch.Generator | None) -> int:
    """A seed for torchattacks' own random start, drawn from the run's generator (reproducible runs)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item()) if generator is not None else 0


@attrs.frozen
class AutoAttack(Attack):
    """AutoAttack (Croce and Hein, 2020; via torchattacks): APGD-CE, APGD-T, FAB-T and Square, ``version`` as
    torchattacks names them (``standard`` or the faster ``rand``/``plus`` variants)."""

    norm: str = attrs.field(default="linf", validator=one_of(["linf", "l2"]))
    epsilon: float = attrs.field(default=8 / 255, validator=in_range(0, low_open=True))
    version: str = attrs.field(default="standard", validator=one_of(["standard", "plus", "rand"]))

    def __attrs_post_init__(self) -> None:
        if not available():
            raise ValueError(INSTALL)

    def check_classes(self, num_classes: int) -> str | None:
        if self.version == "standard" and num_classes < 4:
            return f"standard AutoAttack's targeted attacks need at least 4 classes, got {num_classes}"
        return None

    def perturb(
        self, model: ProbabilityModel, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        import torchattacks

        wrapped = LogProbabilities(model, x.device)
        num_classes = int(model(x[:1]).shape[-1])
        attack = torchattacks.AutoAttack(
            wrapped,
            norm=self.norm.capitalize() if self.norm == "linf" else "L2",
            eps=self.epsilon,
            version=self.version,
            n_classes=num_classes,
            seed=_seed(generator),
        )
        return attack(x, y).detach()


@attrs.frozen
class Square(Attack):
    """The Square attack (Andriushchenko et al., 2020; via torchattacks): score-based black-box random search
    with at most ``queries`` queries per input; stands in for Deng23's SignHunter."""

    norm: str = attrs.field(default="linf", validator=one_of(["linf", "l2"]))
    epsilon: float = attrs.field(default=8 / 255, validator=in_range(0, low_open=True))
    queries: int = attrs.field(default=1000, validator=in_range(1))

    def __attrs_post_init__(self) -> None:
        if not available():
            raise ValueError(INSTALL)

    def perturb(
        self, model: ProbabilityModel, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        import torchattacks

        attack = torchattacks.Square(
            LogProbabilities(model, x.device),
            norm="Linf" if self.norm == "linf" else "L2",
            eps=self.epsilon,
            n_queries=self.queries,
            seed=_seed(generator),
        )
        return attack(x, y).detach()


@hookimpl
def register_attacks(register):
    register("autoattack", AutoAttack)
    register("square", Square)
