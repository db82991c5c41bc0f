"""Auxiliary batch norm: routing by context, each BN's running statistics untouched while the
other runs, the converted model equal to the plain one before any training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlib.models import build_retinanet, build_ssd
from advlib.models.auxbn import DualBatchNorm2d, add_auxiliary_bn, dual_bns, use_bn


def _bn_stats(model, which: str) -> list[torch.Tensor]:
    out = []
    for m in dual_bns(model):
        bn = getattr(m, which)
        out += [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    return out


@pytest.mark.parametrize("build", [lambda: build_ssd("tiny_vgg", 3, 64), lambda: build_retinanet("tiny_resnet", 3, 64)])
def test_selected_bn_alone_updates_its_statistics(build):
    torch.manual_seed(0)
    model = build()
    plain_bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before_out = model(x).cls_logits
    add_auxiliary_bn(model)
    assert sum(1 for _ in dual_bns(model)) == plain_bns > 0
    with torch.no_grad():  # converted but untrained: the same function, through either BN
        torch.testing.assert_close(model(x).cls_logits, before_out)
        with use_bn(model, "aux"):
            torch.testing.assert_close(model(x).cls_logits, before_out)

    model.train()
    main0, aux0 = _bn_stats(model, "main"), _bn_stats(model, "aux")
    with use_bn(model, "aux"):
        model(x)
    assert all(torch.equal(a, b) for a, b in zip(_bn_stats(model, "main"), main0))  # main untouched
    assert not all(torch.equal(a, b) for a, b in zip(_bn_stats(model, "aux"), aux0))
    aux1 = _bn_stats(model, "aux")
    model(x + 0.5)  # outside the context: the main BN
    assert all(torch.equal(a, b) for a, b in zip(_bn_stats(model, "aux"), aux1))  # aux untouched
    assert not all(torch.equal(a, b) for a, b in zip(_bn_stats(model, "main"), main0))
    # the two paths now differ in eval mode (different statistics): the first BN's outputs
    model.eval()
    seen = []
    hook = next(dual_bns(model)).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
        with use_bn(model, "aux"):
            model(x)
    hook.remove()
    assert not torch.allclose(seen[0], seen[1])


def test_routing_is_restored_and_checked():
    model = add_auxiliary_bn(build_ssd("tiny_vgg", 3, 64))
    assert add_auxiliary_bn(model) is model  # idempotent
    with pytest.raises(RuntimeError):
        with use_bn(model, "aux"):
            assert all(m.route == "aux" for m in dual_bns(model))
            raise RuntimeError("boom")
    assert all(m.route == "main" for m in dual_bns(model))
    with pytest.raises(ValueError, match="route"):
        with use_bn(model, "adv"):
            pass
    with pytest.raises(ValueError, match="add_auxiliary_bn"):
        with use_bn(nn.Conv2d(3, 3, 1), "aux"):
            pass
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        add_auxiliary_bn(nn.Conv2d(3, 3, 1))


def test_gradients_reach_only_the_routed_bn_and_the_shared_weights():
    model = add_auxiliary_bn(build_ssd("tiny_vgg", 3, 64)).train()
    with use_bn(model, "aux"):
        model(torch.rand(2, 3, 64, 64)).cls_logits.sum().backward()
    duals = list(dual_bns(model))
    assert all(m.aux.weight.grad is not None and m.main.weight.grad is None for m in duals)
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.grad is not None for c in convs)
    assert isinstance(duals[0], DualBatchNorm2d)
