"""The fused Triton top-k attention against the PyTorch reference (the published formulation).

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set in conftest).
Tolerances: fp32 inputs 2e-5 (fp32 accumulation, IEEE dot, vs a float64 reference); fp16/bf16 inputs
1e-2 / 3e-2 (the probabilities are rounded to the input dtype before the value product, as in
FlashAttention; bf16 keeps 8 mantissa bits).

The selection itself is checked exactly: with one-hot queries, a query row's scores are any fp32
values we choose (computed exactly by any dot), and one-hot values make the output show which
reference keys a row kept (``kept_keys``). The ahead-of-time compile tests compile the kernel for
NVIDIA archs with Triton's compiler and bundled ptxas (no GPU needed) and fail on any spill.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'jfdeploy[triton]')")

import jfdeploy
from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY, step_at_model_size
from jfdeploy.kernels.topk_attention import (
    KernelConfig,
    kernel_config,
    topk_joint_attention,
    topk_joint_attention_reference,
)

TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(batch, heads, rows, own, frames, per_frame, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(n):
        return torch.randn(batch, heads, n, dim, generator=g).to(DEVICE, dtype)

    return randn(rows), randn(own), randn(own), randn(frames * per_frame), randn(frames * per_frame)


def check(inputs, *, topk, frames=1, topk_range="all_frames", valid=None, scale=0.125):
    dtype = inputs[0].dtype
    got = topk_joint_attention(*inputs, scale=scale, topk=topk, frames=frames, topk_range=topk_range, ref_valid=valid)
    expected = topk_joint_attention_reference(
        *(t.double() for t in inputs), scale=scale, topk=topk, frames=frames, topk_range=topk_range, ref_valid=valid
    )
    assert got.dtype == dtype and got.shape == inputs[0].shape
    error = (got.double() - expected).abs().max().item()
    assert error <= TOLERANCE[dtype], f"max error {error:.2e}"


# (batch, heads, rows, own keys, frames, keys per frame, head dim, k, range)
SWEEP = [
    (1, 1, 16, 16, 1, 16, 16, 1, "all_frames"),  # k = 1, one reference frame
    (2, 3, 37, 37, 3, 37, 64, 20, "all_frames"),
    (2, 3, 37, 37, 3, 37, 64, 20, "every_frame"),
    (1, 12, 35, 35, 2, 35, 64, 69, "all_frames"),  # k = all but one
    (1, 12, 35, 35, 2, 35, 64, 70, "all_frames"),  # k = all: plain softmax
    (2, 4, 24, 24, 5, 24, 32, 500, "all_frames"),  # k > available
    (1, 2, 100, 100, 4, 100, 64, 120, "all_frames"),  # the paper's k over T*N = 400
    (1, 2, 100, 100, 5, 100, 64, 60, "every_frame"),
    (1, 1, 20, 20, 5, 128, 64, 600, "all_frames"),  # the largest k: 1024-wide buffer
    (3, 2, 1, 30, 1, 30, 64, 8, "all_frames"),  # a single query row (the memory token's)
]


@pytest.mark.parametrize("case", SWEEP, ids=[f"{c[-1]}-k{c[-2]}-T{c[4]}-h{c[1]}" for c in SWEEP])
def test_matches_reference_fp32(case):
    *shape, topk, topk_range = case
    check(make_inputs(*shape, torch.float32), topk=topk, frames=shape[4], topk_range=topk_range)


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(
        INTERPRETED, reason="Triton's CPU interpreter computes tl.dot wrongly on bfloat16 (numpy has no bf16); GPU only"
    ),
)


@pytest.mark.parametrize("dtype", [torch.float16, BF16])
@pytest.mark.parametrize("topk_range", ["all_frames", "every_frame"])
def test_matches_reference_half_precision(dtype, topk_range):
    check(make_inputs(2, 4, 40, 40, 3, 40, 64, dtype, seed=1), topk=30, frames=3, topk_range=topk_range)


def test_empty_slots_and_padded_objects():
    inputs = make_inputs(3, 2, 30, 30, 4, 30, 64, torch.float32, seed=2)
    valid = torch.ones(3, 120, dtype=torch.bool, device=DEVICE)
    valid[0, 60:] = False  # two empty memory slots
    valid[1, 30:60] = False  # an empty slot in the middle
    valid[2] = False  # a padded object: no reference at all
    check(inputs, topk=40, frames=4, valid=valid)
    check(inputs, topk=10, frames=4, topk_range="every_frame", valid=valid)


def test_strided_views_as_the_model_passes_them():
    qkv = torch.randn(2, 37, 3, 12, 64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # B x heads x N x d views, not contiguous
    refs = torch.randn(2, 2, 12, 74, 64, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    check((q, k, v, refs[0], refs[1]), topk=20, frames=2)


def test_exact_ties_keep_the_lowest_key_indices():
    """Scores exactly equal at the k-th place: the kernel keeps the lowest key indices."""
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-1, 2, (1, 1, 16, 16), generator=g).float() * 0.5
    k_own = torch.randint(-1, 2, (1, 1, 16, 16), generator=g).float() * 0.5
    v_own = torch.randn(1, 1, 16, 16, generator=g)
    k_ref = torch.randint(-1, 2, (1, 1, 4, 16), generator=g).float().repeat(1, 1, 16, 1) * 0.5  # 4 keys x 16 copies
    v_ref = torch.randn(1, 1, 64, 16, generator=g)
    got = topk_joint_attention(*(t.to(DEVICE) for t in (q, k_own, v_own, k_ref, v_ref)), scale=0.25, topk=10)
    # expected: a stable descending sort (ties in index order), first k, one softmax
    scores_own, scores_ref = (q @ k_own.mT) * 0.25, (q @ k_ref.mT) * 0.25
    order = scores_ref.sort(dim=-1, descending=True, stable=True).indices[..., :10]
    kept = torch.full_like(scores_ref, float("-inf")).scatter(-1, order, scores_ref.gather(-1, order))
    probs = torch.cat([scores_own, kept], dim=-1).softmax(-1)
    expected = probs[..., :16] @ v_own + probs[..., 16:] @ v_ref
    assert (got.cpu() - expected).abs().max().item() < 1e-5


@pytest.mark.skipif(
    DEVICE == "cpu",
    reason="the published shapes take ~80 s in Triton's CPU interpreter; on a CPU the kernel is checked against "
    "PyTorch at the published head size (test_matches_reference_*) and in the tiny model's frame loop",
)
def test_golden_clip_with_triton_attention(model32, golden):
    model = copy.deepcopy(model32).to(DEVICE)
    seg = jfdeploy.Segmenter(
        model,
        mem_every=GOLDEN_MEM_EVERY,
        max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES,
        backend="torch",
        attention="triton",
    )
    step_at_model_size(
        seg, torch.from_numpy(golden["frames"][0]).to(DEVICE), mask=torch.from_numpy(golden["mask_t0"]).to(DEVICE)
    )
    prob = step_at_model_size(seg, torch.from_numpy(golden["frames"][1]).to(DEVICE))
    assert np.abs(prob.cpu().numpy() - golden["prob_t1"]).max() <= 1e-4


def test_staged_loop_with_triton_attention_matches_torch(tiny_model):
    """The frame loop with the kernel (tiny model: C = 96, 3 heads of 32, k = 5 of 12 tokens per frame)."""
    model = tiny_model if DEVICE == "cpu" else copy.deepcopy(tiny_model).to(DEVICE)
    clip = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.zeros(2, 40, 56, device=DEVICE)
    mask[0, 4:20, 4:30], mask[1, 22:38, 30:52] = 1, 1
    probs = {}
    for attention in ("torch", "triton"):
        seg = jfdeploy.Segmenter(model, mem_every=1, max_memory_frames=2, backend="torch", attention=attention)
        probs[attention] = [
            step_at_model_size(seg, clip[t], mask=mask if t == 0 else None, last=t == 2) for t in range(3)
        ]
    for t, (expected, got) in enumerate(zip(probs["torch"], probs["triton"], strict=True)):
        assert got.shape == expected.shape == (3, 40, 56)
        assert (got - expected).abs().max().item() <= 1e-5, t


def test_float64_is_refused_with_triton(tiny_model64):
    with pytest.raises(jfdeploy.InputError, match="float64"):
        jfdeploy.Segmenter(tiny_model64, backend="torch", attention="triton")


# ---------------------------------------------------------------------------------------------
# exact selection: which keys each row keeps
# ---------------------------------------------------------------------------------------------

HEAD_DIM = 64


def kept_keys(scores, topk, *, frames=1, topk_range="all_frames", valid=None, config=None):
    """Run the kernel on scores we choose: bool rows x keys, True where the row kept the key.

    scores: rows x keys fp32, rows and keys <= 64. Query row r is the unit vector e_r and key j has
    scores[:, j] in its first dims, so q.k = scores[r, j] exactly in any dot; value j is e_j, so
    output[r, j] is the probability row r gives key j (> 0 exactly when kept). The scale 2^-100
    keeps even 1e30 scores from underflowing the others' probabilities.
    """
    rows, keys = scores.shape
    q = torch.zeros(1, 1, rows, HEAD_DIM)
    q[0, 0, range(rows), range(rows)] = 1.0
    k_ref = torch.zeros(1, 1, keys, HEAD_DIM)
    k_ref[0, 0, :, :rows] = scores.T
    v_ref = torch.zeros(1, 1, keys, HEAD_DIM)
    v_ref[0, 0, range(keys), range(keys)] = 1.0
    own = torch.zeros(1, 1, 1, HEAD_DIM)  # one own key: score 0, value 0
    inputs = (q, own, own, k_ref, v_ref)
    valid = None if valid is None else valid[None].to(DEVICE)
    out = topk_joint_attention(
        *(t.to(DEVICE) for t in inputs), scale=2.0**-100, topk=topk, frames=frames, topk_range=topk_range,
        ref_valid=valid, config=config,
    )  # fmt: skip
    return out[0, 0, :, :keys].cpu() > 0


def expected_keys(scores, topk, *, frames=1, topk_range="all_frames", valid=None):
    """The exact rule: per row and segment, the k largest valid scores, ties to the lowest key index."""
    rows, keys = scores.shape
    segment = keys // frames if topk_range == "every_frame" else keys
    kept = torch.zeros(rows, keys, dtype=torch.bool)
    for r in range(rows):
        for start in range(0, keys, segment):
            candidates = [j for j in range(start, start + segment) if valid is None or valid[j]]
            candidates.sort(key=lambda j: (-scores[r, j].item(), j))
            kept[r, candidates[:topk]] = True
    return kept


def adversarial_scores(keys: int, seed: int) -> torch.Tensor:
    """64 rows of score distributions that stress the search: normal, heavy tails, outliers, ties,
    constant rows, +-0, denormals, spans of 2^-140..2^100, sorted runs, two clusters."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(64, keys, generator=g)
    rows = [
        normal[0],
        normal[1] * 1e-3 + 5.0,
        torch.distributions.StudentT(1.0).sample((keys,)).clamp(-1e30, 1e30),  # Cauchy
        torch.cat([normal[2, : keys - 2], torch.tensor([-1e30, 1e30])]),  # outliers both ways
        torch.cat([normal[3, : keys - 1], torch.tensor([-1e30])]),  # one far below
        torch.randint(-3, 4, (keys,), generator=g).float(),  # many ties
        torch.full((keys,), 2.5),  # all equal
        torch.randint(0, 2, (keys,), generator=g).float() * -0.0,  # +0 and -0 only
        2.0 ** -torch.randint(120, 149, (keys,), generator=g).float(),  # denormals
        2.0 ** torch.randint(-140, 100, (keys,), generator=g).float() * torch.sign(normal[4]),  # huge span
        torch.arange(keys).float(),  # ascending
        -torch.arange(keys).float(),  # descending
        torch.repeat_interleave(normal[5, : keys // 2], 2),  # pairs
        torch.cat([normal[6, : keys // 2] - 50, normal[7, : keys - keys // 2] + 50]),  # two clusters
        torch.exp(normal[8] * 3),  # log-normal
        (normal[9] * 8).round() / 8,  # coarse grid
    ]
    rows = torch.stack(rows)
    return torch.cat([rows, rows[torch.randperm(len(rows), generator=g)].roll(1, dims=1)] * 2)[:64]


# (keys, k, frames, range, config); config None: the interpreter's default tiles (64 x 64)
SELECTION_CASES = [
    (64, 1, 1, "all_frames", None),
    (64, 7, 1, "all_frames", KernelConfig(64, 16, 4, 2)),  # 4 key tiles: counts and tie ranks cross tiles
    (64, 20, 1, "all_frames", KernelConfig(64, 32, 4, 2)),  # the fp16 GPU tiles
    (64, 63, 1, "all_frames", None),  # all but one
    (64, 5, 4, "every_frame", KernelConfig(16, 16, 4, 2)),  # the fp32 GPU tiles, 4 segments of 16
    (64, 16, 4, "every_frame", None),  # k = segment: keep all
]


# with scores up to 1e30 the interpreter's numpy warns about the statistics pass's sum of squares
# (inf) and the guesses made from it (inf - inf: discarded as NaN, by design)
INF_ARITHMETIC = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:overflow encountered:RuntimeWarning"
)


def _case_id(case) -> str:
    _, topk, _, topk_range, config = case
    return f"{topk_range}-k{topk}-" + ("default" if config is None else f"{config.block_m}x{config.block_n}")


@INF_ARITHMETIC
@pytest.mark.parametrize("case", SELECTION_CASES, ids=[_case_id(c) for c in SELECTION_CASES])
def test_selection_is_exact_on_adversarial_scores(case):
    keys, topk, frames, topk_range, config = case
    scores = adversarial_scores(keys, seed=keys + topk)
    got = kept_keys(scores, topk, frames=frames, topk_range=topk_range, config=config)
    expected = expected_keys(scores, topk, frames=frames, topk_range=topk_range)
    wrong = (got != expected).any(dim=1).nonzero().flatten().tolist()
    assert not wrong, f"rows {wrong} keep other keys than the exact top {topk}"


@INF_ARITHMETIC
def test_selection_with_invalid_keys_is_exact():
    scores = adversarial_scores(64, seed=11)
    valid = torch.rand(64, generator=torch.Generator().manual_seed(12)) > 0.3
    valid[16:32] = False  # an empty frame
    for topk, frames, topk_range in ((9, 1, "all_frames"), (3, 4, "every_frame"), (50, 1, "all_frames")):
        got = kept_keys(scores, topk, frames=frames, topk_range=topk_range, valid=valid)
        expected = expected_keys(scores, topk, frames=frames, topk_range=topk_range, valid=valid)
        assert torch.equal(got, expected), f"k={topk} {topk_range}"


def test_launch_configuration_per_arch():
    """fp16/bf16 use 64 x 32 tiles on every GPU generation, fp32 (FMA dot) 16 x 16; k never matters."""
    for capability in (80, 86, 89, 90):
        assert kernel_config(torch.float16, 64, capability) == KernelConfig(64, 32, 4, 2)
        assert kernel_config(torch.bfloat16, 64, capability) == KernelConfig(64, 32, 4, 2)
        assert kernel_config(torch.float32, 64, capability) == KernelConfig(16, 16, 4, 2)


# ---------------------------------------------------------------------------------------------
# ahead-of-time compile: registers, spills, shared memory per arch
# ---------------------------------------------------------------------------------------------


def _nvidia_toolchain_missing() -> str | None:
    """Why the kernel cannot be compiled for NVIDIA GPUs here, or None."""
    try:
        from jfdeploy.kernels import report

        report.toolchain(["sm_80", "sm_90"])
    except Exception as error:  # any failure means: no toolchain
        return f"Triton's NVIDIA backend / bundled ptxas is not usable: {error}"
    return None


NO_TOOLCHAIN = _nvidia_toolchain_missing()
needs_toolchain = pytest.mark.skipif(NO_TOOLCHAIN is not None, reason=NO_TOOLCHAIN or "")


def test_report_specializes_arguments_as_the_jit_does():
    """The report's specialization of runtime arguments equals Triton's own (where Triton exposes it)."""
    from jfdeploy.kernels import report

    jit = pytest.importorskip("triton.runtime.jit")
    native = getattr(jit, "native_specialize_impl", None)
    if native is None:
        pytest.skip("this Triton does not expose native_specialize_impl")
    from triton.backends.compiler import BaseBackend

    values = [1, 16, 37, 0, 2**33, 0.5, torch.empty(8, dtype=torch.float16), torch.empty(8, dtype=torch.int8)[1:]]
    for value in values:
        kind, spec = native(BaseBackend, value, False, True, True)
        assert report.specialize(value) == (kind, spec if spec is not None else None), value


@needs_toolchain
def test_table9_configuration_compiles_without_spills(tmp_path):
    """fp16, k = 120 over all frames, sm_90 (the paper's Table 9 setting): no spill, <= 99 KB shared."""
    from jfdeploy.cli import main

    out = tmp_path / "report.json"
    assert main(["kernels", "--arch", "sm_90", "--case", "fp16:120:all_frames", "--json", str(out), "--check"]) == 0
    import json

    (row,) = json.loads(out.read_text())["rows"]
    assert not row["error"], row["error"]
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
    assert 0 < row["shared"] <= 99 * 1024 and 0 < row["registers"] <= 255, row


def test_kernels_command_refuses_an_unknown_arch(capsys):
    from jfdeploy.cli import main

    assert main(["kernels", "--arch", "sm_75"]) == 2
    assert "unknown arch sm_75" in capsys.readouterr().err


@pytest.mark.slow
@needs_toolchain
def test_every_configuration_compiles_clean():
    """Every configuration (fp16 k 20..600, fp32 / bf16 k 120, both ranges) on sm_86 (the least shared memory
    per block, 99 KB) and sm_90: no spill, <= 99 KB shared memory. ``jfdeploy kernels --check`` compiles
    the same matrix for sm_80 and sm_89 too (benchmarks/results/kernel_report_*.md)."""
    from jfdeploy.kernels import report

    result = report.compile_report(["sm_86", "sm_90"])
    unclean = [row for row in result["rows"] if not row["clean"]]
    assert len(result["rows"]) == 2 * len(report.DEFAULT_CASES)
    assert not unclean, unclean
