"""ConvMAE-Base pieces: convolutional patch embeds and blocks (1/4, 1/8), MLPs, position embedding.

Shape grammar: ``B x C x H x W`` for feature maps, ``B x N x C`` for token sequences.
Attribute names follow the published checkpoint's keys (``convmae.blocks1.0.conv1.weight``, ...),
so an official state dict loads without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TRANSFORMER_NORM_EPS = 1e-6  # transformer blocks and the final norm
CONV_NORM_EPS = 1e-5  # convolutional blocks and patch-embed norms (nn.LayerNorm's default)


def channel_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel dimension of a ``B x C x H x W`` map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Strided convolution + channel LayerNorm + GELU: ``B x Cin x H x W -> B x Cout x H/p x W/p``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=CONV_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(channel_layer_norm(self.norm, self.proj(x)))


class ConvMlp(nn.Module):
    """1x1-convolution MLP on a feature map."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """ConvMAE's convolutional block: 5x5 depthwise "attention" and a 1x1 MLP, both residual.

    ``B x C x H x W -> B x C x H x W``.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=CONV_NORM_EPS)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # depthwise 5x5
        self.norm2 = nn.LayerNorm(dim, eps=CONV_NORM_EPS)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv2(self.attn(self.conv1(channel_layer_norm(self.norm1, x))))
        return x + self.mlp(channel_layer_norm(self.norm2, x))


class Mlp(nn.Module):
    """Token MLP: ``B x N x C -> B x N x C``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def resized_position_embedding(pos_embed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The learned square token-grid embedding, resized bicubically to ``height x width``.

    pos_embed: 1 x (1 + S*S) x C (first row: the memory token's). Returns 1 x (height*width) x C.
    Always resized, also to its own size (bicubic with half-pixel centers is then the identity),
    so that an exported graph resizes for every input size.
    """
    grid = pos_embed[:, 1:]
    side = math.isqrt(int(grid.shape[1]))
    channels = int(grid.shape[-1])
    square = grid.reshape(1, side, side, channels).permute(0, 3, 1, 2)  # 1 x C x S x S
    resized = F.interpolate(square, size=(height, width), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, height * width, channels)
