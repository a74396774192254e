"""Members from the checkpoints people already have: the layouts the original randomized-smoothing code publishes
(``{arch, state_dict}`` with the network behind a stateless normalization layer, keys ``1.`` or ``1.module.``), plain
state dicts (with or without DataParallel's ``module.``), each written here in that exact layout and loaded."""

from __future__ import annotations

import pytest
import torch

from ensemblecert import UserError, build_component, load_registry, run
from ensemblecert.running.member_checkpoints import network_weights


def digits_network(name: str, seed: int):
    """A network as the digits pipeline builds it (1 x 8 x 8 inputs, 10 classes), with its normalization-free
    weights, as a published checkpoint would hold them."""
    from ensemblecert.plugins.datasets import Digits

    info = Digits().load().info
    torch.manual_seed(seed)
    net = build_component("model", {"name": name}, load_registry()).build(info)
    with torch.no_grad():  # batch-norm statistics that are not the defaults, so that buffers must load too
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


LAYOUTS = {
    "published": lambda sd: {"arch": "cifar_resnet20", "epoch": 90, "state_dict": {f"1.{k}": v for k, v in sd.items()}},
    "published, DataParallel": lambda sd: {
        "arch": "cifar_resnet20",
        "state_dict": {f"1.module.{k}": v for k, v in sd.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    },
    "plain state dict": lambda sd: dict(sd),
    "plain, DataParallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
}


@pytest.fixture(scope="module")
def networks():
    return [digits_network("resnet20", seed) for seed in range(3)]


def pipeline(tmp_path, files, model="resnet20"):
    return {
        "seed": 0,
        "device": "cpu",
        "output": str(tmp_path / "run"),
        "ensemble": {"members": len(files), "model": {"name": model}, "checkpoints": [str(f) for f in files]},
        "certification": {"certifiers": [{"name": "cohen", "n0": 10, "n": 100, "alpha": 0.01}], "max_examples": 3},
    }


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_loads_the_very_weights(layout, networks, tmp_path):
    files = []
    for k, net in enumerate(networks):
        path = tmp_path / f"member{k}.pth.tar"
        torch.save(LAYOUTS[layout](net.state_dict()), path)
        files.append(path)
    result = run(pipeline(tmp_path, files))
    x = torch.rand(5, 1, 8, 8)
    for member, net in zip(result.ensemble.members, networks):
        loaded = member.get_submodule("net")
        for key, value in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        normalize = member.get_submodule("normalize")  # the data's normalization, in front of the network
        assert torch.allclose(member(x), net(normalize(x)))


def test_the_file_chooses_the_architecture_where_it_says(networks, tmp_path):
    path = tmp_path / "published.pth.tar"
    torch.save(LAYOUTS["published"](networks[0].state_dict()), path)
    result = run(pipeline(tmp_path, [path], model="mlp"))  # the pipeline's model is not what the file holds
    assert type(result.ensemble.members[0].get_submodule("net")).__name__ == "CifarResNet"
    assert len(result.results) == 3


def test_weights_that_do_not_fit_are_named(networks, tmp_path):
    wrong = tmp_path / "wrong.pth.tar"
    state = LAYOUTS["published"](networks[0].state_dict())
    torch.save({**state, "arch": "cifar_resnet110"}, wrong)
    with pytest.raises(
        UserError, match=r"wrong\.pth\.tar: its weights \(the file says arch 'cifar_resnet110'\) do not fit"
    ):
        run(pipeline(tmp_path, [wrong]))
    unknown = tmp_path / "unknown.pth.tar"
    torch.save({**state, "arch": "wide_resnet"}, unknown)
    with pytest.raises(UserError, match=r"names the architecture 'wide_resnet', which ensemblecert does not know"):
        run(pipeline(tmp_path, [unknown]))
    junk = tmp_path / "junk.pt"
    torch.save({"epoch": 3, "note": "no weights"}, junk)
    with pytest.raises(UserError, match=r"junk\.pt: not a checkpoint ensemblecert reads"):
        run(pipeline(tmp_path, [junk]))


def test_the_normalization_layer_is_dropped_whatever_it_holds():
    weights = {"0.mean": torch.zeros(3), "1.module.fc.weight": torch.ones(2, 2)}
    assert list(network_weights({"arch": "resnet50", "state_dict": weights}, None)) == ["fc.weight"]
