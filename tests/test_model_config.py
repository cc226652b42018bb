"""Configurable widths and depths: the tiny configuration, top-k block selection, tiny checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import jfdeploy
from conftest import TINY_TOPK, step_at_model_size
from jfdeploy import ModelConfig
from jfdeploy.model.checkpoint import architecture_of, random_model

H, W = 40, 56  # padded to 48 x 64: 12 tokens


def same_weights(a: jfdeploy.JointFormer, b: jfdeploy.JointFormer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def first_frames(model: jfdeploy.JointFormer, frames: int = 3) -> list[torch.Tensor]:
    """Probabilities of a short 2-object clip (the first frame's mask, then predictions)."""
    clip = torch.randn(frames, 3, H, W, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, H, W)
    mask[0, 4:20, 4:30], mask[1, 22:38, 30:52] = 1, 1
    seg = jfdeploy.Segmenter(model, mem_every=1, max_memory_frames=2, backend="torch")
    return [
        step_at_model_size(seg, clip[t], mask=mask if t == 0 else None, last=t == frames - 1) for t in range(frames)
    ]


def test_default_is_the_published_architecture():
    config = ModelConfig()
    assert config.embed_dims == (256, 384, 768) and config.num_heads == 12 and config.head_dim == 64
    assert config.num_joint_blocks == 11 and config.conv_depths == (2, 2) and config.pos_grid == 24
    assert config.decoder_dim == 256 and (config.update_depth, config.enhance_depth) == (2, 1)


@pytest.mark.parametrize(
    ("blocks", "published", "tiny"),
    [
        ("all", tuple(range(11)), (0, 1, 2)),
        ("half", (5, 6, 7, 8, 9, 10), (1, 2)),
        ("last", (10,), (2,)),
        ("none", (), ()),
    ],
)
def test_topk_blocks_follow_the_joint_block_count(blocks, published, tiny):
    assert ModelConfig(topk=5, topk_blocks=blocks).topk_block_indices == published
    assert ModelConfig.tiny(topk=5, topk_blocks=blocks).topk_block_indices == tiny
    model = random_model(ModelConfig.tiny(topk=5, topk_blocks=blocks, topk_memory_token=True))
    assert [blk.topk for blk in model.joint_blocks] == [5 if i in tiny else None for i in range(3)]
    assert [blk.memory_token_topk for blk in model.joint_blocks] == [5 if i in tiny else None for i in range(3)]


def test_tiny_model_has_the_tiny_shapes(tiny_model):
    config = tiny_model.config
    assert config == ModelConfig.tiny(topk=TINY_TOPK)
    assert len(tiny_model.joint_blocks) == 3 and len(tiny_model.convmae.blocks1) == 1
    assert tiny_model.joint_blocks[0].attn.num_heads == 3
    assert tiny_model.convmae.pos_embed.shape == (1, 1 + 8 * 8, 96)
    assert sum(p.numel() for p in tiny_model.parameters()) < 2_000_000
    tokens, f8, f4 = tiny_model.encode_current(torch.zeros(2, 3, 48, 64))
    assert tokens.shape == (2, 12, 96) and f8.shape == (2, 48, 6, 8) and f4.shape == (2, 32, 12, 16)
    assert architecture_of(tiny_model.state_dict()) == {
        k: v for k, v in config.architecture().items() if k != "num_heads"
    }


def test_random_weights_are_deterministic(tiny_model):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        again = jfdeploy.load_model(None, config=ModelConfig.tiny(), topk=TINY_TOPK)
    assert same_weights(again, tiny_model) and again.config == tiny_model.config


def test_keyword_options_override_the_config():
    assert jfdeploy.load_model(None, config=ModelConfig.tiny(topk=3)).config.topk == 3
    model = jfdeploy.load_model(None, config=ModelConfig.tiny(topk=3), topk=None, topk_range="every_frame")
    assert model.config.topk is None and model.config.topk_range == "every_frame"
    assert jfdeploy.load_model(None, config=ModelConfig.tiny()).config.topk == ModelConfig().topk


def test_tiny_checkpoint_round_trip(tiny_model, tmp_path):
    path = tmp_path / "tiny.pth"
    jfdeploy.save_checkpoint(tiny_model, path)
    loaded = jfdeploy.load_model(path, topk=TINY_TOPK)  # every shape, and the heads, from the file
    assert loaded.config == tiny_model.config
    assert same_weights(loaded, tiny_model)
    for a, b in zip(first_frames(loaded), first_frames(tiny_model), strict=True):
        assert torch.equal(a, b)


def test_plain_tiny_state_dict_takes_its_heads_from_the_config(tiny_model):
    """No shape shows the head count: a plain state dict needs the config (else the published 12)."""
    state = tiny_model.state_dict()
    loaded = jfdeploy.load_model(state, config=ModelConfig.tiny(), topk=TINY_TOPK)
    assert loaded.config == tiny_model.config
    assert all(torch.equal(a, b) for a, b in zip(first_frames(loaded), first_frames(tiny_model), strict=True))
    twelve_heads = jfdeploy.load_model(state, topk=TINY_TOPK)
    assert twelve_heads.config == dataclasses.replace(tiny_model.config, num_heads=12)
    assert not torch.allclose(first_frames(twelve_heads)[1], first_frames(tiny_model)[1])


def test_a_config_that_does_not_match_the_checkpoint_is_refused(tiny_model):
    with pytest.raises(jfdeploy.CheckpointError, match=r"num_joint_blocks: checkpoint 3, config 11"):
        jfdeploy.load_model(tiny_model.state_dict(), config=ModelConfig())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(num_heads=5), "num_heads must divide the width 96"),
        (dict(decoder_dim=30), "decoder tokens"),
        (dict(embed_dims=(32, 48)), "embed_dims must be 3"),
        (dict(num_joint_blocks=0), "num_joint_blocks"),
        (dict(embed_dims=(8, 12, 96)), r"embed_dims\[1\] must be >= 16"),
    ],
)
def test_impossible_architectures_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(**fields)
