"""Inside an actor: open a video, describe it, and forward a batch's decoded videos in groups."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from pipeline.io.storage import filesystem, is_local
from pipeline.io.video import VideoReader

from .options import RunOptions
from .prepare import PREPARED_COLUMNS, PreparedVideo, encode_prepared

# ----------------------------------------------------------------------------- shared helpers

@contextmanager
def open_video(uri: str, storage_options: Mapping[str, Any], stream: int | None = None) -> Iterator[VideoReader]:
    """A VideoReader on a local path or any fsspec URI (remote files are read through a buffered handle).

    stream: the stream to read (None: the default moving video stream; pipeline/io/video.py "Which stream").
    """
    fs, path = filesystem(uri, storage_options)
    if is_local(fs):
        with VideoReader(path, threads=1, stream=stream) as video:
            yield video
        return
    with fs.open(path, "rb", block_size=8 * 2**20) as f, VideoReader(f, threads=1, stream=stream) as video:
        yield video


def video_facts(video: VideoReader) -> dict[str, Any]:
    """The row columns that describe the video read (INTER_SCHEMA, SCORE_SCHEMA): its facts, which
    stream, and how it had to be read when not the normal way (VideoReader.notes)."""
    info = video.info
    return {"num_frames": info.num_frames, "width": info.width, "height": info.height, "fps": info.fps,
            "stream": info.stream_index, "read_notes": "; ".join(video.notes) or None}


def videos_per_forward(opts: RunOptions, device: torch.device) -> int:
    """Videos whose clips share one forward pass: a GPU wants large batches (the whole actor batch by
    default); on CPU one clip at a time is fastest anyway (`model.securevqa.micro_batches`)."""
    if opts.forward_videos is not None:
        if opts.forward_videos < 1:
            raise ValueError(f"--forward-videos must be >= 1, got {opts.forward_videos}")
        return opts.forward_videos
    return max(1, opts.batch_size) if device.type == "cuda" else 1


def worker_label(device: torch.device) -> str:
    """Where a row was computed: Ray node, the GPUs Ray gave the actor, and the torch device in use
    (a GPU id from Ray with device cpu means torch sees no GPU on that node: a broken image). Stages
    with a separate preparation append where the video was prepared (`prepare_label`)."""
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f"node={ctx.get_node_id()[:12]} gpus={','.join(map(str, ray.get_gpu_ids())) or '-'} device={device}"
    except Exception:  # outside an actor (tests, local calls): no Ray context
        pass
    return f"local device={device}"


def prepare_label() -> str:
    """Where a video was prepared (decoded and cut): `prep=<Ray node>`, appended to the row's `worker` by
    the model stage; `prep=local` outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return f"prep={ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:  # outside a Ray worker
        pass
    return "prep=local"


@dataclass
class Prepared:
    """One decoded video waiting for its forward pass: its output row, model input, cached inter
    embedding (stage 2) and its own generator (guardian maps follow the sampling draws)."""

    row: dict[str, Any]
    inputs: PreparedVideo
    extra: torch.Tensor | None
    generator: torch.Generator


def prepared_frame(batch: pd.DataFrame, prepare_one: Callable[[Any], tuple[dict[str, Any], PreparedVideo | None,
                                                                        torch.Generator | None, Any]]) -> pd.DataFrame:
    """`batch` with the PREPARED_COLUMNS of each row, from prepare_one(row) = (output row so far, uint8
    inputs or None, generator after the preparation's draws, cached embedding or None)."""
    label = prepare_label()
    records = []
    for r in batch.itertuples(index=False):
        row, *rest = prepare_one(r)
        row["worker"] = label
        records.append(encode_prepared(row, *rest))
    return batch.assign(**{c: [rec[c] for rec in records] for c in PREPARED_COLUMNS})


def forward_grouped(prepared: list[Prepared], videos: int, forward: Callable[[list[Prepared]], list[torch.Tensor]]
                    ) -> list[tuple[torch.Tensor | Exception, float]]:
    """(output or error, model seconds) per video, forwarding `videos` videos' clips at a time.

    A group that fails (e.g. out of GPU memory) is re-run one video at a time from the generator
    states it started with: the error lands on its own video, and seeded scores do not change.
    """
    out: list[tuple[torch.Tensor | Exception, float]] = []
    for i in range(0, len(prepared), max(1, videos)):
        chunk = prepared[i:i + max(1, videos)]
        states = [p.generator.get_state() for p in chunk]
        t0 = time.perf_counter()
        try:
            results = forward(chunk)
            share = (time.perf_counter() - t0) / len(chunk)
            out.extend((r, share) for r in results)
            continue
        except Exception as exc:
            if len(chunk) == 1:
                out.append((exc, time.perf_counter() - t0))
                continue
        for p, state in zip(chunk, states):
            p.generator.set_state(state)
            t0 = time.perf_counter()
            try:
                out.append((forward([p])[0], time.perf_counter() - t0))
            except Exception as exc:
                out.append((exc, time.perf_counter() - t0))
    return out
