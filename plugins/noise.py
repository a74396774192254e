"""Noise samplers: isotropic Gaussian noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from ensemblecert import NoiseSampler, hookimpl
from ensemblecert.validators import positive


@attrs.frozen
class GaussianNoise(NoiseSampler):
    """Isotropic Gaussian noise N(0, sigma^2 I), the noise of L2 randomized smoothing."""

    family: ClassVar[str] = "gaussian"
    sigma: float = attrs.field(default=0.25, validator=positive)

    def sample(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return noise.mul_(self.sigma)


@hookimpl
def register_noise_samplers(register):
    register("gaussian", GaussianNoise)
