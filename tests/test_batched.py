"""Cross-stream batching: frames of several videos through the stages together, each as if alone.

The server's batch function (``jfdeploy.serve.scheduler.run_batch``) is driven here in-process with real
predictors of the tiny model: a video batched with three others gives what it gives alone (float64: to
rounding; float32: the same labels), whatever the others' objects, sizes and memory settings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import GOLDEN_MAX_MEMORY_FRAMES, GOLDEN_MEM_EVERY, pad_evenly
from jfdeploy import Segmenter
from jfdeploy.backends.ort_runtime import OrtRuntime
from jfdeploy.backends.staged import StagedBackend, segment_together
from jfdeploy.io import make_clip
from jfdeploy.predictor import RunOptions, VideoPredictor
from jfdeploy.serve.scheduler import WorkItem, run_batch
from jfdeploy.serve.sessions import Session

FRAMES = 6

# (objects, seed, mem_every, max_memory_frames, frame where object 2 joins or None, height, width)
VIDEOS = [
    (2, 1, 2, 2, None, 48, 64),
    (1, 2, 1, 2, None, 48, 64),
    (3, 3, 3, 1, None, 48, 64),
    (2, 4, 2, 2, 3, 48, 64),  # an object added mid-video: the pair axis grows while batched
    (1, 5, 2, 2, None, 64, 48),  # another frame size: batched with nobody, still correct
]


def clip(objects: int, seed: int, added: int | None, height: int, width: int):
    frames, labels = make_clip(num_frames=FRAMES, height=height, width=width, num_objects=objects, seed=seed)
    prompts = {0: np.where(labels[0] == 2, 0, labels[0]).astype(np.uint8) if added else labels[0]}
    if added:
        prompts[added] = np.where(labels[added] == 2, 2, 0).astype(np.uint8)
    return frames, prompts


def sessions(model, runtime=None, engines=None) -> list[Session]:
    """One session per video; all share one runtime (the tiny model's, or the engine directory's)."""
    made = []
    backend = {"backend": "torch"} if engines is None else {"backend": "onnxruntime", "engines": engines}
    for objects, seed, mem_every, memory_frames, added, height, width in VIDEOS:
        del objects, seed, added, height, width
        options = RunOptions(**backend, sizes=(None,), mem_every=mem_every, max_memory_frames=memory_frames)
        predictor = VideoPredictor(model, options=options, runtime=runtime)
        runtime = predictor.runtime
        made.append(Session(f"s{len(made)}", options, predictor, last_used=0.0))
    return made


def alone(model, engines=None) -> list[list]:
    """Each video stepped by its own predictor, one frame at a time."""
    results = []
    for (objects, seed, mem_every, memory_frames, added, height, width), session in zip(
        VIDEOS, sessions(model, engines=engines), strict=True
    ):
        del mem_every, memory_frames
        frames, prompts = clip(objects, seed, added, height, width)
        steps = [session.predictor.step(f, prompts.get(t), probabilities=True) for t, f in enumerate(frames)]
        results.append(steps)
    return results


def batched(model, engines=None) -> list[list]:
    """The frames t of all videos as one run_batch call per t."""
    made = sessions(model, engines=engines)
    clips = [clip(objects, seed, added, h, w) for objects, seed, _, _, added, h, w in VIDEOS]
    results: list[list] = [[] for _ in VIDEOS]
    for t in range(FRAMES):
        items = [
            WorkItem(s, frames[t], prompts.get(t), probabilities=True)
            for s, (frames, prompts) in zip(made, clips, strict=True)
        ]
        for index, result in enumerate(run_batch(items)):
            assert not isinstance(result, BaseException), result
            results[index].append(result)
    return results


@pytest.fixture(scope="module")
def float64_runs(tiny_model64):
    return alone(tiny_model64), batched(tiny_model64)


def test_a_video_batched_with_others_equals_itself_alone_float64(float64_runs):
    by_itself, together = float64_runs
    for video, (mine, theirs) in enumerate(zip(by_itself, together, strict=True)):
        for t, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert a.object_ids == b.object_ids
            np.testing.assert_array_equal(a.labels, b.labels, err_msg=f"video {video} frame {t}")
            np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-12)


def test_float32_batches_give_the_labels_of_each_video_alone(tiny_model):
    by_itself = alone(tiny_model)
    together = batched(tiny_model)
    for mine, theirs in zip(by_itself, together, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-5)


def test_an_engine_directory_batches_the_videos_too(tiny_engines32, monkeypatch):
    """onnxruntime on the CPU: the graphs take a batch of frames and the pairs' rows; each video's labels
    are its labels alone, its probabilities within float32 rounding."""
    made = sessions(None, engines=tiny_engines32)
    assert made[0].predictor.runtime.batches
    frames_encoded: list[int] = []
    run = OrtRuntime.run

    def recording(self, stage, *inputs, **kwargs):
        if stage == "frame_encoder":
            frames_encoded.append(inputs[0].shape[0])
        return run(self, stage, *inputs, **kwargs)

    monkeypatch.setattr(OrtRuntime, "run", recording)
    together = batched(None, tiny_engines32)
    assert max(frames_encoded) == 3  # videos 0, 1, 3 (one frame size and memory layout) in one call
    for mine, theirs in zip(alone(None, tiny_engines32), together, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-5)


def test_the_batch_runs_the_model_stages_once_per_batch(tiny_model):
    """Videos of one frame size and memory layout (slots) go as one batch: one frame-encoder call over
    their frames, one reader call over their (video, object) pairs; the video with one memory frame
    (fewer slots) goes alone."""
    made = sessions(tiny_model)[:4]
    clips = [clip(objects, seed, added, h, w) for objects, seed, _, _, added, h, w in VIDEOS[:4]]
    first = [WorkItem(s, frames[0], prompts[0]) for s, (frames, prompts) in zip(made, clips, strict=True)]
    run_batch(first)
    runtime = made[0].predictor.runtime
    calls: list[tuple[str, tuple[int, ...]]] = []
    original = runtime.run

    def counting(stage, *inputs, **kwargs):
        calls.append((stage, tuple(inputs[0].shape)))
        return original(stage, *inputs, **kwargs)

    runtime.run = counting
    try:
        run_batch([WorkItem(s, frames[1]) for s, (frames, _) in zip(made, clips, strict=True)])
    finally:
        del runtime.run
    model_calls = [(stage, shape) for stage, shape in calls if stage in ("frame_encoder", "memory_reader")]
    assert model_calls == [
        ("frame_encoder", (3, 3, 48, 64)),  # videos 0, 1, 3 (3 slots)
        ("memory_reader", (2 + 1 + 1, 96, 3, 4)),  # their pairs (video 3's second object joins later)
        ("frame_encoder", (1, 3, 48, 64)),  # video 2 (2 slots)
        ("memory_reader", (1, 96, 3, 4)),  # alone: the frame's tokens, expanded over its objects in the stage
    ]


def test_a_frame_that_cannot_begin_fails_alone(tiny_model):
    made = sessions(tiny_model)[:3]
    clips = [clip(objects, seed, added, h, w) for objects, seed, _, _, added, h, w in VIDEOS[:3]]
    run_batch([WorkItem(s, frames[0], prompts[0]) for s, (frames, prompts) in zip(made, clips, strict=True)])
    bad = np.zeros((5, 5), np.uint8)  # a mask of another size than the frame
    rest = zip(made[1:], clips[1:], strict=True)
    items = [WorkItem(made[0], clips[0][0][1], bad), *(WorkItem(s, c[0][1]) for s, c in rest)]
    results = run_batch(items)
    assert isinstance(results[0], Exception) and "label map is 5x5" in str(results[0])
    assert all(not isinstance(r, BaseException) for r in results[1:])


def test_engine_runtimes_segment_each_video_in_turn(tiny_model):
    """A runtime that cannot batch gets its frames one at a time: same logits as segment()."""
    made = sessions(tiny_model)[:2]
    clips = [clip(objects, seed, added, h, w) for objects, seed, _, _, added, h, w in VIDEOS[:2]]
    run_batch([WorkItem(s, frames[0], prompts[0]) for s, (frames, prompts) in zip(made, clips, strict=True)])
    backends = [s.predictor.segmenters[0].backend for s in made]
    assert all(isinstance(b, StagedBackend) for b in backends)
    runtime = backends[0].runtime
    frames = []
    for session, (clip_frames, _) in zip(made, clips, strict=True):
        tables = session.predictor._frame_tables((48, 64), None, False)[:4]
        frames.append(runtime.run("preprocess", runtime.upload(clip_frames[1]), *tables)[0])
    tokens = [b.memory_token.clone() for b in backends]
    together = segment_together(backends, frames)
    for b, token in zip(backends, tokens, strict=True):
        b.memory_token = token
    runtime.batches = False  # as an engine runtime
    try:
        in_turn = segment_together(backends, frames)
    finally:
        del runtime.batches
    for a, b in zip(together, in_turn, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_golden_clip_float64_batched_with_three_others(model64, golden):
    """The published model on the golden clip, batched on every frame with three other videos (their own
    objects and mem_every, random frames): each golden frame still matches the published code to 1e-9."""
    first = Segmenter(model64, mem_every=GOLDEN_MEM_EVERY, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, backend="torch")
    segmenters = [first] + [
        Segmenter(
            model64, mem_every=m, max_memory_frames=GOLDEN_MAX_MEMORY_FRAMES, backend="torch", runtime=first.runtime
        )
        for m in (1, 2, 3)
    ]
    runtime = first.runtime
    frames = torch.from_numpy(golden["frames"]).double()  # T x 3 x H x W, normalized
    generator = torch.Generator().manual_seed(5)
    others = [torch.randn(frames.shape, generator=generator, dtype=torch.float64) for _ in range(3)]
    height, width = frames.shape[-2:]
    first_masks = [torch.from_numpy(golden["mask_t0"]).double()]
    for objects in (1, 2, 3):
        masks = torch.zeros((objects, height, width), dtype=torch.float64)
        for o in range(objects):
            masks[o, 8 + 12 * o : 30 + 12 * o, 10 + 20 * o : 40 + 20 * o] = 1.0
        first_masks.append(masks)
    left, _, top, _ = pad_evenly(frames[:1])[1]
    last = frames.shape[0] - 1
    for t in range(frames.shape[0]):
        plans = []
        for video, segmenter in enumerate(segmenters):
            frame = (frames if video == 0 else others[video - 1])[t]
            padded = runtime.upload(pad_evenly(frame[None])[0].numpy())
            masks = runtime.upload(pad_evenly(first_masks[video])[0].numpy()) if t == 0 else None
            plans.append(segmenter.plan(padded, masks, last=t == last))
        segmenting = [(s, p) for s, p in zip(segmenters, plans, strict=True) if p.need_segment]
        logits = iter(segment_together([s.backend for s, _ in segmenting], [p.frame for _, p in segmenting]))
        probs = [
            s.complete(p, next(logits) if p.need_segment else None) for s, p in zip(segmenters, plans, strict=True)
        ]
        prob = runtime.download(probs[0])[:, top : top + height, left : left + width]
        np.testing.assert_allclose(prob, golden[f"prob_t{t}"], rtol=0, atol=1e-9)
