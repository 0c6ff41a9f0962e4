"""PoolerBase: one config / save / load / repr / width / capabilities for every learned pooler.

The configs are pinned to what each module wrote before the base class existed, so folders saved
then still load; the capabilities are declared, and :class:`Pooler` acts on the declaration.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from seqpool import registry
from seqpool._version import __version__
from seqpool.errors import SeqpoolError
from seqpool.pooling import masked_mean
from seqpool.pooling.attention import AttentionPooling
from seqpool.pooling.attentive_stats import AttentiveStatisticsPooling
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.gem import GeMPooling
from seqpool.pooling.latent_attention import LatentAttentionPooling
from seqpool.pooling.pooler import Pooler
from seqpool.pooling.scalar_mix import ScalarMix, ScalarMixPooling
from seqpool.pooling.squeeze_excitation import SqueezeExcitation, SqueezeExcitationMean

HIDDEN = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])

#: (module, the config.json it wrote before PoolerBase): these keys and values must not change.
SAVED_BEFORE = [
    (lambda: GeMPooling(4), {"seqpool_type": "GeMPooling", "dim": 4, "p": 3.0, "eps": 1e-6, "signed": True,
                             "per_channel": False, "learn_p": True, "p_min": 1.0}),
    (lambda: GeMPooling(4, p=2, per_channel=True, learn_p=False),
     {"seqpool_type": "GeMPooling", "dim": 4, "p": 2.0, "eps": 1e-6, "signed": True, "per_channel": True,
      "learn_p": False, "p_min": 1.0}),
    (lambda: ScalarMix(3, learn_gamma=False), {"seqpool_type": "ScalarMix", "num_layers": 3, "gamma": 1.0,
                                               "learn_gamma": False}),
    (lambda: ScalarMixPooling(3, strategy="max", gamma=2),
     {"seqpool_type": "ScalarMixPooling", "num_layers": 3, "strategy": "max", "gamma": 2.0, "learn_gamma": True}),
    (lambda: LatentAttentionPooling(4, num_queries=2, mode="concat", dropout=0.1),
     {"seqpool_type": "LatentAttentionPooling", "dim": 4, "num_queries": 2, "mode": "concat", "key_dim": 4,
      "dropout": 0.1}),
    (lambda: AttentiveStatisticsPooling(4, attention_dim=8, channelwise=False),
     {"seqpool_type": "AttentiveStatisticsPooling", "dim": 4, "attention_dim": 8, "channelwise": False,
      "global_context": True}),
    (lambda: Pooler("attention", dim=4, heads=2),
     {"seqpool_type": "Pooler", "strategy": "attention", "dim": 4, "kwargs": {"heads": 2}}),
    (lambda: Pooler("mean"), {"seqpool_type": "Pooler", "strategy": "mean", "dim": None, "kwargs": {}}),
]


@pytest.mark.parametrize("build, expected", SAVED_BEFORE)
def test_configs_are_the_ones_saved_before_and_such_folders_load(build, expected, tmp_path):
    module = build()
    assert module.config == {**expected, "seqpool_version": __version__}
    module.save_pretrained(tmp_path)
    # a folder written by the old code: its config.json as it wrote it (another version too)
    (tmp_path / "config.json").write_text(json.dumps({**expected, "seqpool_version": "0.0.9"}), encoding="utf-8")
    loaded = type(module).from_pretrained(tmp_path)
    assert not loaded.training and loaded.config == module.config
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("module", [AttentionPooling(4, heads=2, hidden_dim=3, dropout=0.25),
                                    SqueezeExcitation(4, rd_ratio=0.5, act_layer="gelu", bias=False),
                                    SqueezeExcitationMean(4, reduction=2)], ids=lambda module: type(module).__name__)
def test_modules_that_only_a_pooler_saved_before_now_save_themselves(module, tmp_path):
    module.save_pretrained(tmp_path)
    loaded = type(module).from_pretrained(tmp_path)
    assert loaded.config == module.config and loaded.config["seqpool_type"] == type(module).__name__
    module.eval()
    torch.testing.assert_close(loaded(HIDDEN, MASK), module(HIDDEN, MASK))


def test_squeeze_excitation_saves_the_bottleneck_it_resolved():
    module = SqueezeExcitation(8, reduction=4, rd_ratio=0.75)
    assert module.config["rd_channels"] == 6 == module.rd_channels
    assert SqueezeExcitation(**{k: v for k, v in module.config.items() if not k.startswith("seqpool_")}).rd_channels == 6


def test_repr_shows_the_declared_arguments():
    assert repr(GeMPooling(4)).startswith("GeMPooling(dim=4, p=3.0, signed=True, per_channel=False)")
    assert "strategy='attention', dim=4" in repr(Pooler("attention", dim=4))
    assert "num_queries=2, mode='concat'" in repr(LatentAttentionPooling(4, num_queries=2, mode="concat"))


@pytest.mark.parametrize("module, width", [
    (AttentionPooling(4, heads=3), 12), (GeMPooling(4), 4), (AttentiveStatisticsPooling(4), 8),
    (LatentAttentionPooling(4, num_queries=3, mode="concat"), 12), (LatentAttentionPooling(4), 4),
    (SqueezeExcitationMean(4), 4), (ScalarMixPooling(2), None), (ScalarMix(2), None),
], ids=lambda value: type(value).__name__ if isinstance(value, nn.Module) else str(value))
def test_output_dim_is_the_class_width_formula(module, width):
    assert module.output_dim == width
    if width is not None:
        assert module(HIDDEN, MASK).shape == (3, width)


def test_capabilities_are_declared_and_hold():
    weighing = {AttentionPooling: True, LatentAttentionPooling: True, AttentiveStatisticsPooling: True,
                GeMPooling: False, SqueezeExcitationMean: False, ScalarMixPooling: False}
    for cls, returns in weighing.items():
        assert cls.returns_weights is returns, cls
    for module in (AttentionPooling(4), LatentAttentionPooling(4), AttentiveStatisticsPooling(4)):
        pooled, weights = module(HIDDEN, MASK, return_weights=True)
        assert torch.equal(pooled, module(HIDDEN, MASK)) and weights.shape[0] == 3
    assert SqueezeExcitationMean(4).pools_from_mean and not GeMPooling(4).pools_from_mean
    assert ScalarMixPooling(2).pools_from_mean and not ScalarMixPooling(2, strategy="max").pools_from_mean
    with pytest.raises(SeqpoolError, match="GeMPooling needs every token"):
        GeMPooling(4).from_mean(masked_mean(HIDDEN, MASK))
    gem = GeMPooling(4)
    filled = HIDDEN.masked_fill(~MASK.bool().unsqueeze(-1), 0.0)
    assert torch.equal(gem.pool_filled(filled, MASK.bool()), gem(HIDDEN, MASK))  # the default: forward


def test_a_replaced_mean_is_not_taken_for_the_mean():
    """scalar_mix pools from the layer means only when its pooling *is* the masked mean."""
    saved = dict(registry._USER)
    try:
        registry.register_strategy("mean", lambda h, m: 2 * masked_mean(h, m), replace=True)
        assert not ScalarMixPooling(2).pools_from_mean
    finally:
        registry._USER.clear()
        registry._USER.update(saved)
    assert ScalarMixPooling(2).pools_from_mean


def test_the_pooler_acts_on_the_modules_declarations():
    pooler = Pooler("se_mean", dim=4)
    assert pooler.pools_from_mean and not pooler.returns_weights
    torch.testing.assert_close(pooler.from_mean(masked_mean(HIDDEN, MASK)), pooler(HIDDEN, MASK))
    assert Pooler("latent_attention", dim=4).returns_weights and not Pooler("mean").returns_weights
    with pytest.raises(SeqpoolError, match="only available for 'attention'"):
        Pooler("gem", dim=4)(HIDDEN, MASK, return_weights=True)
    pooler.module.pools_from_mean = False  # the declaration, not a probe, decides
    with pytest.raises(SeqpoolError, match="needs every token"):
        pooler.from_mean(masked_mean(HIDDEN, MASK))


@pytest.mark.usefixtures("clean_registry")
def test_a_learned_factory_must_build_a_pooler_base():
    registry._USER["plain"] = replace(registry.get_strategy("gem"), name="plain",
                                      factory=lambda dim: nn.Linear(dim, dim), origin="user")
    with pytest.raises(SeqpoolError, match="not a seqpool PoolerBase"):
        Pooler("plain", dim=4)
    assert issubclass(GeMPooling, PoolerBase) and issubclass(Pooler, PoolerBase)
