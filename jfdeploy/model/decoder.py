"""The mask decoder: fusion with CBAM at 1/16, two upsampling steps with skips, a 3x3 logit conv,
and the decoder tokens (fused 1/16, 1/8, 1/4 features) that update the compressed memory.

Batch = objects. Attribute names follow the published checkpoint (``decoder.fuser_16.attention.
ChannelGate.mlp.1.weight``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """Two 3x3 convs with pre-activation ReLU; a 3x3 conv on the skip when channels change."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = nn.Conv2d(in_dim, out_dim, 3, padding=1) if in_dim != out_dim else None
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        # indices 1 and 3 as in the checkpoint: (flatten, linear, relu, linear)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))  # B x C
        return x * torch.sigmoid(pooled)[:, :, None, None]


class _SpatialConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FusionBlock(nn.Module):
    """[f16; enhanced f16] -> ResBlock -> + CBAM -> ResBlock, at 1/16."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block1 = ResBlock(in_dim, out_dim)
        self.attention = CBAM(out_dim)
        self.block2 = ResBlock(out_dim, out_dim)

    def forward(self, f16: torch.Tensor, enhanced_f16: torch.Tensor) -> torch.Tensor:
        g = self.block1(torch.cat([f16, enhanced_f16], dim=1))
        return self.block2(g + self.attention(g))


class UpsampleBlock(nn.Module):
    """2x bilinear upsampling of the coarse map plus a 3x3 conv of the skip feature, then a ResBlock."""

    def __init__(self, skip_dim: int, up_dim: int, out_dim: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, up_dim, 3, padding=1)
        self.out_conv = ResBlock(up_dim, out_dim)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(self.skip_conv(skip) + up)


class TokenFuser(nn.Module):
    """Decoder tokens: 1x1 convs of the 1/16, 1/8 (area-pooled 2x) and 1/4 (+logit, pooled 4x) maps."""

    def __init__(self, g16_dim: int, g8_dim: int, g4_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.g16_conv = nn.Conv2d(g16_dim, hidden_dim, 1)
        self.g8_conv = nn.Conv2d(g8_dim, hidden_dim, 1)
        self.g4_conv = nn.Conv2d(g4_dim, hidden_dim, 1)

    def forward(self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor) -> torch.Tensor:
        # area downsampling by an integer factor is average pooling (sizes are multiples of 16)
        return torch.cat(
            [self.g16_conv(g16), self.g8_conv(F.avg_pool2d(g8, 2)), self.g4_conv(F.avg_pool2d(g4, 4))],
            dim=1,
        )


class Decoder(nn.Module):
    def __init__(self, f16_dim: int = 768, f8_dim: int = 384, f4_dim: int = 256, hidden_dim: int = 256) -> None:
        """Widths of the backbone's f16, f8, f4 maps; hidden_dim: the 1/4 decoder width (3 x hidden_dim = f16_dim)."""
        super().__init__()
        self.fuser_16 = FusionBlock(2 * f16_dim, f8_dim)
        self.up_16_8 = UpsampleBlock(f8_dim, f8_dim, f4_dim)
        self.up_8_4 = UpsampleBlock(f4_dim, f4_dim, hidden_dim)
        self.pred = nn.Conv2d(hidden_dim, 1, 3, padding=1)
        self.fuser_all = TokenFuser(f8_dim, f4_dim, hidden_dim + 1, hidden_dim)

    def forward(
        self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, enhanced_f16: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-object features -> (logits B x 1 x H x W at input size, decoder tokens B x C x H/16 x W/16).

        Published widths: f16, enhanced_f16: B x 768 x H/16 x W/16; f8: B x 384 x H/8 x W/8;
        f4: B x 256 x H/4 x W/4; hidden 256 (decoder tokens 3 x 256 = 768).
        """
        g16 = self.fuser_16(f16, enhanced_f16)  # B x f8_dim x H/16 x W/16
        g8 = self.up_16_8(f8, g16)  # B x f4_dim x H/8 x W/8
        g4 = self.up_8_4(f4, g8)  # B x hidden x H/4 x W/4
        logits = self.pred(F.relu(g4))  # B x 1 x H/4 x W/4
        decoder_tokens = self.fuser_all(g16, g8, torch.cat([g4, logits], dim=1))
        logits = F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)
        return logits, decoder_tokens
