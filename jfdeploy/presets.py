"""Evaluation presets: memory frames, memory interval and top-k as the published evaluation sets them per dataset.

Source of every value: the published evaluation script of JointFormer (``eval.sh`` in the MCG-NJU/JointFormer
repository, release v0.1), which passes ``--max_memory_frames`` and ``--topk_num`` per dataset to its
``eval.py`` and leaves the memory interval at the script's default of 5; the same script names the
checkpoint each dataset is evaluated with (listed here as ``checkpoints``, best first as the script
orders them). ``--preset NAME`` sets these three options; an option given explicitly wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from jfdeploy.errors import InputError


@dataclass(frozen=True)
class Preset:
    """One dataset's published evaluation setting."""

    name: str
    dataset: str
    max_memory_frames: int
    topk: int
    checkpoints: tuple[str, ...]
    mem_every: int = 5

    def describe(self) -> str:
        return (
            f"{self.name}: {self.dataset}; {self.max_memory_frames} memory frame(s), top-k {self.topk}, "
            f"memory every {self.mem_every} frames; checkpoints {', '.join(self.checkpoints)}"
        )


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        # eval.sh, "DAVIS 2017 val/test": --max_memory_frames 1 --topk_num 60
        Preset("davis17", "DAVIS 2017", 1, 60, ("jointformer_s2.pth", "jointformer_s02.pth", "jointformer_s012.pth")),
        # eval.sh, "Youtube-VOS 2018" and "Youtube-VOS 2019": --max_memory_frames 3 --topk_num 120
        Preset(
            "ytvos",
            "YouTube-VOS 2018 / 2019",
            3,
            120,
            ("jointformer_s2.pth", "jointformer_s02.pth", "jointformer_s012.pth"),
        ),
        # eval.sh, "VOST": --max_memory_frames 3 --topk_num 30
        Preset("vost", "VOST", 3, 30, ("jointformer_s24.pth", "jointformer_s024.pth")),
        # eval.sh, "MOSE": --max_memory_frames 3 --topk_num 180
        Preset("mose", "MOSE", 3, 180, ("jointformer_s5.pth", "jointformer_s05.pth", "jointformer_s015.pth")),
        # eval.sh, "LVOS val/test": --max_memory_frames 3 --topk_num 120
        Preset(
            "lvos",
            "LVOS",
            3,
            120,
            ("jointformer_s02.pth", "jointformer_s012.pth", "jointformer_s026.pth", "jointformer_s0126.pth"),
        ),
        # eval.sh, "VISOR": --max_memory_frames 1 --topk_num 600
        Preset("visor", "VISOR", 1, 600, ("jointformer_s7.pth", "jointformer_s07.pth")),
        # eval.sh, "BURST val/test": --max_memory_frames 3 --topk_num 30
        Preset("burst", "BURST", 3, 30, ("jointformer_s2.pth", "jointformer_s02.pth", "jointformer_s012.pth")),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
