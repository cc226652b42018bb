"""Checkpoints: official key names, wrappers, our format, mismatches, single-object conversion."""

from __future__ import annotations

import warnings

import pytest
import torch

import jfdeploy
from conftest import DATA, GOLDEN_TOPK, step_at_model_size
from jfdeploy.model.checkpoint import REFERENCE_EMBED_KEY, block_depths


def official_keys() -> list[tuple[str, tuple[int, ...]]]:
    lines = (DATA / "official_state_dict.tsv").read_text().splitlines()[1:]
    return [(k, tuple(int(d) for d in s.split("x"))) for k, s in (line.split("\t") for line in lines)]


def test_state_dict_has_the_official_keys_and_shapes(model32):
    ours = [(k, tuple(v.shape)) for k, v in model32.state_dict().items()]
    assert ours == official_keys()


def test_golden_weight_rule(golden_state_dict):
    # spot values of the rule: norm scales near 1, biases small, matrices scaled by fan-in
    assert abs(golden_state_dict["convmae.norm.weight"].mean().item() - 1.0) < 0.02
    assert golden_state_dict["decoder.pred.bias"].abs().max().item() < 0.1
    w = golden_state_dict["convmae.blocks3.0.attn.qkv.weight"]
    assert abs(w.std().item() - 768**-0.5) < 1e-3


def same_weights(a: jfdeploy.JointFormer, b: jfdeploy.JointFormer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_in_our_format(model32, tmp_path):
    path = tmp_path / "sub" / "model.pth"
    jfdeploy.save_checkpoint(model32, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]  # no temp files left
    loaded = jfdeploy.load_model(path, topk=GOLDEN_TOPK)
    assert same_weights(loaded, model32)
    assert loaded.config == model32.config
    assert torch.load(path, weights_only=True)["format"] == "jfdeploy"


def test_published_file_with_wrapper_and_module_prefix(golden_state_dict, model32, tmp_path):
    path = tmp_path / "jointformer_s02.pth"
    torch.save({"model": {f"module.{k}": v for k, v in golden_state_dict.items()}}, path)
    assert same_weights(jfdeploy.load_model(str(path), topk=GOLDEN_TOPK), model32)


def test_loaded_model_does_not_alias_the_callers_tensors(golden_state_dict):
    model = jfdeploy.load_model(golden_state_dict, topk=GOLDEN_TOPK)
    with torch.no_grad():
        model.convmae.norm.weight.add_(1.0)
    assert not torch.equal(model.convmae.norm.weight, golden_state_dict["convmae.norm.weight"])


def test_key_mismatch_names_the_keys(golden_state_dict):
    state = dict(golden_state_dict)
    del state["decoder.pred.bias"]
    state["decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(jfdeploy.CheckpointError) as info:
        jfdeploy.load_model(state)
    message = str(info.value)
    assert "missing keys: decoder.pred.bias" in message
    assert "unexpected keys: decoder.extra_head.weight" in message


def test_shape_mismatch_is_named(golden_state_dict):
    state = dict(golden_state_dict, **{"decoder.pred.weight": torch.zeros(2, 256, 3, 3)})
    with pytest.raises(jfdeploy.CheckpointError, match=r"decoder\.pred\.weight: checkpoint \(2, 256, 3, 3\)"):
        jfdeploy.load_model(state)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(jfdeploy.CheckpointError, match="not found"):
        jfdeploy.load_model(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(jfdeploy.CheckpointError, match="cannot read"):
        jfdeploy.load_model(garbage)
    with pytest.raises(jfdeploy.CheckpointError, match="not a JointFormer"):
        jfdeploy.load_model({"fc.weight": torch.zeros(2, 2)})


def test_single_object_checkpoint_is_widened(tiny_model, golden):
    """On the tiny model (the conversion does not depend on the widths): 32 x 4 x 4 x 4 -> 32 x 5 x 4 x 4."""
    state = dict(tiny_model.state_dict())
    state[REFERENCE_EMBED_KEY] = state[REFERENCE_EMBED_KEY][:, :4].clone()
    config = tiny_model.config
    with pytest.warns(UserWarning, match="single-object checkpoint"):
        first = jfdeploy.load_model(state, config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = jfdeploy.load_model(state, config=config)
    weight = first.state_dict()[REFERENCE_EMBED_KEY]
    assert weight.shape == (32, 5, 4, 4)
    assert torch.equal(weight[:, :4], state[REFERENCE_EMBED_KEY])
    assert torch.equal(weight, second.state_dict()[REFERENCE_EMBED_KEY])  # reproducible
    assert 0.01 < weight[:, 4].std().item() < 0.03  # the published N(0, 0.02) channel
    seg = jfdeploy.Segmenter(first, mem_every=3, max_memory_frames=2)
    step_at_model_size(seg, torch.from_numpy(golden["frames"][0]), mask=torch.from_numpy(golden["mask_t0"]))
    assert step_at_model_size(seg, torch.from_numpy(golden["frames"][1])).shape == (3, 72, 104)


def test_block_depths_come_from_the_checkpoint(golden_state_dict):
    state = {k: v for k, v in golden_state_dict.items() if not k.startswith("convmae.blocks4.1.")}
    for k, v in golden_state_dict.items():
        if k.startswith("convmae.blocks5.0."):
            state[k.replace("blocks5.0.", "blocks5.1.")] = v
    assert block_depths(state) == (1, 2)
    model = jfdeploy.load_model(state)
    assert (model.config.update_depth, model.config.enhance_depth) == (1, 2)
    assert len(model.convmae.blocks4) == 1 and len(model.convmae.blocks5) == 2


def test_failed_save_leaves_nothing(model32, tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        jfdeploy.save_checkpoint(model32, tmp_path / "model.pth")
    assert list(tmp_path.iterdir()) == []


def test_no_checkpoint_warns_loudly():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        jfdeploy.load_model(None, topk=GOLDEN_TOPK, config=jfdeploy.ModelConfig.tiny())
