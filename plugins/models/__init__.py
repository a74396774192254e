"""Base-model architectures: MLP, LeNet, the CIFAR ResNets (20, 110) and torchvision's ResNet-50."""

from __future__ import annotations

import math

import attrs
from torch import nn

from ensemblecert import DataInfo, Model, hookimpl
from ensemblecert.validators import in_range, positive

from .cifar_resnet import CifarResNet


@attrs.frozen
class MLP(Model):
    """Fully connected network with ReLU hidden layers of the given widths."""

    hidden: list[int] = attrs.field(factory=lambda: [256, 256], validator=positive)

    def build(self, info: DataInfo) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(info.input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, info.num_classes))
        return nn.Sequential(*layers)


@attrs.frozen
class LeNet(Model):
    """LeNet-5 style: two 5x5 convolutions (6 and 16 channels) with max-pooling, then 120-84-C."""

    def build(self, info: DataInfo) -> nn.Module:
        channels, height, width = info.input_shape
        size = lambda s: (s // 2) // 2  # noqa: E731 - two 2x2 poolings, "same" convolutions
        flat = 16 * size(height) * size(width)
        if flat == 0:
            raise ValueError(f"lenet needs inputs of at least 4x4, got {height}x{width}")
        return nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, info.num_classes),
        )


@attrs.frozen
class ResNet20(Model):
    """CIFAR ResNet-20 (He et al., 2016): 3 stages of 3 basic blocks, 16/32/64 channels."""

    def build(self, info: DataInfo) -> nn.Module:
        return CifarResNet(20, info.num_classes, in_channels=info.input_shape[0])


@attrs.frozen
class ResNet110(Model):
    """CIFAR ResNet-110 (He et al., 2016): 3 stages of 18 basic blocks, 16/32/64 channels."""

    def build(self, info: DataInfo) -> nn.Module:
        return CifarResNet(110, info.num_classes, in_channels=info.input_shape[0])


@attrs.frozen
class ResNet50(Model):
    """torchvision's ResNet-50 (ImageNet), randomly initialised; ``width`` scales its channels (1 = standard)."""

    width: int = attrs.field(default=1, validator=in_range(1))

    def build(self, info: DataInfo) -> nn.Module:
        from torchvision.models import resnet50
        from torchvision.models.resnet import Bottleneck, ResNet

        if self.width == 1:
            net = resnet50(weights=None, num_classes=info.num_classes)
        else:
            net = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=info.num_classes, width_per_group=64 * self.width)
        if info.input_shape[0] != 3:
            net.conv1 = nn.Conv2d(info.input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        return net


@hookimpl
def register_models(register):
    register("mlp", MLP)
    register("lenet", LeNet)
    register("resnet20", ResNet20)
    register("resnet110", ResNet110)
    register("resnet50", ResNet50)
