import pytest
import torch

from ensemblecert import DataInfo, build_component, build_member, load_registry


@pytest.mark.parametrize(
    "spec,shape,params",
    [
        ({"name": "mlp", "hidden": [20, 10]}, (1, 8, 8), 64 * 20 + 20 + 20 * 10 + 10 + 10 * 10 + 10),
        ({"name": "lenet"}, (1, 28, 28), None),
        ({"name": "lenet"}, (1, 8, 8), None),
        ({"name": "resnet20"}, (3, 32, 32), None),
        ({"name": "resnet110"}, (3, 32, 32), None),
        ({"name": "resnet50"}, (3, 64, 64), None),
    ],
)
def test_models_build_and_run(spec, shape, params):
    registry = load_registry()
    info = DataInfo(shape, 10, (0.5,) * shape[0], (0.2,) * shape[0])
    member = build_member(build_component("model", spec, registry), info, seed=0).eval()
    with torch.no_grad():
        out = member(torch.rand(2, *shape))
    assert out.shape == (2, 10)
    if params is not None:
        assert sum(p.numel() for p in member.parameters()) == params


def test_resnet_depths():
    from ensemblecert.plugins.models.cifar_resnet import BasicBlock, CifarResNet

    for depth, blocks in ((20, 9), (110, 54)):
        net = CifarResNet(depth, 10)
        assert sum(isinstance(m, BasicBlock) for m in net.modules()) == blocks
    # ResNet-20 has about 0.27M parameters (He et al., 2016)
    assert 0.26e6 < sum(p.numel() for p in CifarResNet(20, 10).parameters()) < 0.28e6
    with pytest.raises(ValueError):
        CifarResNet(21, 10)


def test_normalisation_is_the_first_layer():
    registry = load_registry()
    info = DataInfo((1, 8, 8), 10, (0.5,), (0.25,))
    member = build_member(build_component("model", {"name": "mlp"}, registry), info, seed=0)
    assert list(dict(member.named_children())) == ["normalize", "net"]
    assert torch.allclose(member.normalize(torch.full((1, 1, 8, 8), 0.75)), torch.ones(1, 1, 8, 8))
