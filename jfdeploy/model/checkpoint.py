"""Checkpoints: the published JointFormer files, jfdeploy's own format, deterministic random weights.

Published checkpoints are plain state dicts with keys ``convmae.*`` and ``decoder.*`` (our module
names are the published ones, so they load as they are). Tolerated wrappers: a ``module.`` prefix
(DataParallel), ``{"model": ...}`` / ``{"state_dict": ...}``, and the published training code's
checkpoints ``{"it": int, "network": state_dict, "optimizer": ..., "scheduler": ...}`` (only the
network is read; still weights-only loading). A single-object checkpoint (reference
patch embed with 4 input channels) gets a 5th channel the way the published loader adds it: a
truncated normal with std 0.02 (seeded here, so a conversion is reproducible).

jfdeploy's format: ``{"format": "jfdeploy", "version": 1, "config": {...}, "state_dict": {...}}``.

The architecture (widths, depths, position grid) is read from the tensor shapes, so published and
smaller (``ModelConfig.tiny()``) checkpoints load alike; the head count, which no shape shows, comes
from a jfdeploy file's config, else from the ``config`` given, else the published 12.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jfdeploy.errors import CheckpointError
from jfdeploy.fsutil import atomic_file
from jfdeploy.model.config import ModelConfig
from jfdeploy.model.jointformer import JointFormer

FORMAT_NAME = "jfdeploy"
FORMAT_VERSION = 1
REFERENCE_EMBED_KEY = "convmae.patch_embed1_memory.proj.weight"
SINGLE_OBJECT_PAD_SEED = 0

StateDict = dict[str, torch.Tensor]


def read_state_dict(source: str | os.PathLike | Mapping) -> StateDict:
    """A path or an in-memory checkpoint -> a flat state dict with published key names."""
    return read_checkpoint(source)[0]


def read_checkpoint(source: str | os.PathLike | Mapping) -> tuple[StateDict, dict | None]:
    """A path or an in-memory checkpoint -> (flat state dict with published key names, saved config).

    The saved config is the ``config`` mapping of jfdeploy's format, None for other checkpoints.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a corrupt or foreign file
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    else:
        loaded = source
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict, got {type(loaded).__name__}")
    saved_config = None
    if loaded.get("format") == FORMAT_NAME:
        if loaded.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"jfdeploy checkpoint version {loaded.get('version')} is not {FORMAT_VERSION}")
        saved = loaded.get("config")
        saved_config = dict(saved) if isinstance(saved, Mapping) else None
        loaded = loaded["state_dict"]
    else:
        for wrapper in ("network", "model", "state_dict"):  # network: the published trainer's checkpoints
            if wrapper in loaded and isinstance(loaded[wrapper], Mapping):
                loaded = loaded[wrapper]
                break
    state = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state, saved_config


def block_depths(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(memory-token update blocks, enhance blocks) as the checkpoint has them."""

    def depth(prefix: str) -> int:
        return len({key.split(".")[2] for key in state if key.startswith(prefix)})

    return depth("convmae.blocks4."), depth("convmae.blocks5.")


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Blocks ``prefix.0.*``, ``prefix.1.*``, ... in the checkpoint (``prefix`` like ``convmae.blocks3``)."""
    return len({key.split(".")[2] for key in state if key.startswith(prefix + ".")})


ARCHITECTURE_KEYS = (
    "convmae.patch_embed1_query.proj.weight",  # C4 x 3 x 4 x 4
    "convmae.patch_embed2.proj.weight",  # C8 x C4 x 2 x 2
    "convmae.patch_embed3.proj.weight",  # C x C8 x 2 x 2
    "convmae.pos_embed",  # 1 x (1 + S*S) x C
    "decoder.pred.weight",  # 1 x hidden x 3 x 3
)


def architecture_of(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ModelConfig fields that tensor shapes fix (all of ARCHITECTURE_FIELDS but num_heads)."""
    update_depth, enhance_depth = block_depths(state)
    if update_depth == 0 or enhance_depth == 0:
        raise CheckpointError(
            "checkpoint has no convmae.blocks4.* or convmae.blocks5.* keys: not a JointFormer checkpoint"
        )
    missing = [key for key in ARCHITECTURE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint lacks {', '.join(missing)}: not a JointFormer checkpoint")
    grid_tokens = int(state["convmae.pos_embed"].shape[1]) - 1
    return dict(
        embed_dims=tuple(int(state[key].shape[0]) for key in ARCHITECTURE_KEYS[:3]),
        num_joint_blocks=count_blocks(state, "convmae.blocks3"),
        conv_depths=(count_blocks(state, "convmae.blocks1"), count_blocks(state, "convmae.blocks2")),
        pos_grid=math.isqrt(grid_tokens),
        decoder_dim=int(state["decoder.pred.weight"].shape[1]),
        update_depth=update_depth,
        enhance_depth=enhance_depth,
    )


def config_for_checkpoint(
    state: Mapping[str, torch.Tensor], saved: Mapping | None, given: ModelConfig | None, options: Mapping
) -> ModelConfig:
    """The config of a checkpoint's model: its shapes, the head count, and the top-k ``options``.

    Heads: the saved config's (jfdeploy format), else ``given``'s, else the published 12. A ``given``
    config whose architecture differs from the checkpoint's is refused (the wrong model was asked for).
    """
    shapes = architecture_of(state)
    if given is not None:
        differing = [
            f"{name}: checkpoint {value}, config {getattr(given, name)}"
            for name, value in shapes.items()
            if getattr(given, name) != value
        ]
        if differing:
            raise CheckpointError("checkpoint does not match the given config; " + "; ".join(differing))
    heads = (saved or {}).get("num_heads") or (given.num_heads if given is not None else ModelConfig().num_heads)
    base = given if given is not None else ModelConfig()
    try:
        return dataclasses.replace(base, **shapes, num_heads=int(heads), **options)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint shapes make no JointFormer: {exc}") from exc


def convert_single_object(state: StateDict) -> StateDict:
    """Widen a single-object reference patch embed (256 x 4 x 4 x 4) to the 5-channel input."""
    weight = state.get(REFERENCE_EMBED_KEY)
    if weight is None or weight.shape[1] != 4:
        return state
    warnings.warn(
        "single-object checkpoint: adding a 'sum of other objects' input channel "
        "(truncated normal, std 0.02, as the published loader does)",
        stacklevel=3,
    )
    generator = torch.Generator().manual_seed(SINGLE_OBJECT_PAD_SEED)
    pad = torch.empty(weight.shape[0], 1, *weight.shape[2:], dtype=torch.float32)
    torch.nn.init.trunc_normal_(pad, std=0.02, a=-2.0, b=2.0, generator=generator)
    return {**state, REFERENCE_EMBED_KEY: torch.cat([weight, pad.to(weight.dtype)], dim=1)}


def check_keys(model: JointFormer, state: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
        return f"{title}: {shown}"

    parts = [
        listing(t, i)
        for t, i in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong_shape),
        )
        if i
    ]
    raise CheckpointError("checkpoint does not match JointFormer; " + "; ".join(parts))


def deterministic_state_dict(model: JointFormer) -> StateDict:
    """Random weights by a fixed rule over the key names (the golden data's rule).

    For each key: z = RandomState(crc32(key)).standard_normal(shape) in float64; norm scales
    1 + 0.1 z, biases 0.02 z, everything else z / sqrt(fan_in); cast once to float32.
    """
    state = {}
    for key, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        z = np.random.RandomState(zlib.crc32(key.encode())).standard_normal(shape)
        if key.endswith(".weight") and len(shape) == 1:
            w = 1.0 + 0.1 * z
        elif key.endswith(".bias"):
            w = 0.02 * z
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            w = z / np.sqrt(fan_in)
        state[key] = torch.from_numpy(w.astype(np.float32))
    return state


def build_model(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> JointFormer:
    """A JointFormer in eval mode holding (a float32 copy of) ``state``; keys checked first."""
    with torch.device("meta"):  # no throw-away initialization of ~110M parameters
        model = JointFormer(config)
    check_keys(model, state)
    model.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in state.items()}, assign=True)
    return model.eval()


class _Unset:
    """Marks a load_model option the caller did not give (the config's, or the default, applies)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()
LOAD_DEFAULTS: dict[str, Any] = dict(topk=120, topk_range="all_frames", topk_blocks="all", topk_memory_token=False)


def load_model(
    checkpoint: str | os.PathLike | Mapping | None,
    topk: int | None = UNSET,
    topk_range: str = UNSET,
    topk_blocks: str = UNSET,
    topk_memory_token: bool = UNSET,
    *,
    config: ModelConfig | None = None,
) -> JointFormer:
    """A JointFormer in eval mode, float32 on the CPU, with the checkpoint's weights.

    ``checkpoint``: a path, a state dict (published or jfdeploy format), or None for deterministic
    random weights (with a loud warning: they are not trained). The architecture (widths, depths) is
    read from the checkpoint. Move/cast the result as usual (``.double()``, ``.cuda()``).

    ``config``: the architecture and options to start from, e.g. ``ModelConfig.tiny()`` for small
    random weights; with a checkpoint it must agree with the checkpoint's shapes. The top-k keyword
    options, where given, override it; where neither gives one, the defaults are topk=120 over all
    frames in all blocks, memory token unfiltered.
    """
    given = dict(topk=topk, topk_range=topk_range, topk_blocks=topk_blocks, topk_memory_token=topk_memory_token)
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not UNSET}
    if config is None:
        options = {**LOAD_DEFAULTS, **options}
    if checkpoint is None:
        warnings.warn(
            "NO CHECKPOINT GIVEN: using deterministic RANDOM weights. Masks will be meaningless; "
            "pass a trained JointFormer checkpoint for real segmentation.",
            stacklevel=2,
        )
        random_config = dataclasses.replace(config or ModelConfig(), **options)
        return random_model(random_config)
    state, saved = read_checkpoint(checkpoint)
    state = convert_single_object(state)
    return build_model(config_for_checkpoint(state, saved, config, options), state)


def random_model(config: ModelConfig) -> JointFormer:
    """A JointFormer of ``config`` with the deterministic random weights (no warning; for tests and tools)."""
    with torch.device("meta"):
        shapes = JointFormer(config)
    return build_model(config, deterministic_state_dict(shapes))


def save_checkpoint(model: JointFormer, path: str | os.PathLike) -> None:
    """Write jfdeploy's format atomically (a failed save leaves no partial file)."""
    path = Path(path)
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
