"""Reading back what a tracker wrote, independently of the code that wrote it: TensorBoard's own
event reader, and the records of an offline W&B run (its `.wandb` file: W&B's record log)."""

from __future__ import annotations

import struct
from pathlib import Path


def tensorboard_tags(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """Scalars (tag → [(step, value)]) and image tags of every event file under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    scalars: dict[str, list[tuple[int, float]]] = {}
    images: list[str] = []
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        tags = events.Tags()
        for tag in tags["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
        images += tags["images"]
    return scalars, images


def wandb_run(root: Path) -> tuple[dict, set[str]]:
    """The run record (name, project) and every history key of the one offline W&B run under
    `root` (`<root>/wandb/offline-run-*/run-*.wandb`)."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {root}, found {files}"
    run: dict = {}
    keys: set[str] = set()
    for data in _log_records(files[0].read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {"name": record.run.display_name, "project": record.run.project}
        elif kind == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return run, keys


def _log_records(data: bytes, block: int = 32768) -> list[bytes]:
    """W&B's run file: a 7-byte header (`:W&B`, magic, version), then LevelDB-log blocks of
    records (4-byte CRC, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""
    assert data[:4] == b":W&B", data[:8]
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records
