"""Run folders on nodes that share no filesystem (`--train.node_local=true`).

Each node keeps a complete run folder of its own (the same --out, on its own disk): its first rank (torchrun's
LOCAL_RANK 0) holds that folder's lock and writes its metrics.jsonl and checkpoints, so any one node's folder
can resume the run, on any number of nodes and ranks (the data position and noise streams are laid out by
global batch, training/state.py). Three collectives keep the folders in step, all through the training
process group (gloo or NCCL), so nothing but the ranks' own connections is needed:

- `sync_folder`: after the ranks of every node wrote their part of a checkpoint into their node's temporary
  folder (rank 0 the full weights and the small files; under FSDP each rank its shard), every file one node
  has and another lacks is broadcast from the first rank that has it, in 64 MiB pieces, and written by the
  node that lacks it; then each node writes the manifest and renames the folder into place;
- `resume_point`: every node names its newest good checkpoint; all resume from the newest of them, and a node
  that lacks it (a new node, a lost disk) receives a copy first;
- errors found on one node (checkpoints already there, every checkpoint damaged) stop every rank together;
- `agree_config`: every rank trains with rank 0's configuration (on --resume the CLI reads it from the newest
  checkpoint of the folder it sees, which a node that lacks that checkpoint does not have).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from sunfish.checkpoint.files import checkpoint_dir, read_state
from sunfish.config import RunConfig, config_from_dict
from sunfish.fileio import replace_folder
from sunfish.training.parallel import DistInfo, barrier

PIECE = 64 << 20  # bytes per broadcast


def _listing(folder: Path) -> dict[str, int]:
    """{relative posix path: bytes} of the files under `folder` (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def sync_folder(folder: Path, info: DistInfo) -> int:
    """Collective: afterwards every node's `folder` holds every file any node's holds. Returns files received here."""
    if not info.separate_folders:
        return 0
    listings: list[dict[str, int] | None] = [None] * info.world
    dist.all_gather_object(listings, _listing(folder) if info.writes_files else None)
    writers = [r for r, found in enumerate(listings) if found is not None]
    received = 0
    for name in sorted({n for r in writers for n in listings[r]}):
        source = next(r for r in writers if name in listings[r])
        lacking = [r for r in writers if name not in listings[r]]
        if not lacking:
            continue
        size, here = listings[source][name], info.rank in lacking
        _broadcast_file(folder / name, size, source, info, receive=here)
        received += here
    barrier(info)
    return received


def _broadcast_file(path: Path, size: int, source: int, info: DistInfo, receive: bool) -> None:
    """Broadcast the file `path` of rank `source` (size bytes) to every rank; ranks with `receive` write it."""
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reader = path.open("rb") if info.rank == source else None
    writer = None
    if receive:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = path.open("wb")
    try:
        for start in range(0, size, PIECE):  # an empty file: created, nothing sent
            n = min(PIECE, size - start)
            if reader is not None:
                piece = torch.frombuffer(bytearray(reader.read(n)), dtype=torch.uint8).to(comm)  # (n,)
            else:
                piece = torch.empty(n, dtype=torch.uint8, device=comm)
            dist.broadcast(piece, src=source)
            if writer is not None:
                writer.write(piece.cpu().numpy().tobytes())
    finally:
        for f in (reader, writer):
            if f is not None:
                f.close()


def _gather(value, info: DistInfo) -> list:
    found: list = [None] * info.world
    dist.all_gather_object(found, value)
    return found


def agree_config(cfg: RunConfig, info: DistInfo) -> RunConfig:
    """Rank 0's configuration, on every rank (the configuration itself without separate folders)."""
    if not info.separate_folders:
        return cfg
    box = [cfg.to_dict() if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return config_from_dict(box[0])


def resume_point(run_dir: Path, resume: bool, info: DistInfo,
                 local: Callable[[Path, bool, Callable[[str], None]], Path | None],
                 log: Callable[[str], None]) -> Path | None:
    """The checkpoint every rank continues from. `local(run_dir, resume, log)` finds it in one folder (raising a
    ValueError a person can act on); with separate folders each node's first rank asks its own, all ranks agree
    on the newest step, and nodes without that checkpoint receive it."""
    if not info.separate_folders:
        return local(run_dir, resume, log)
    error, step = None, -1
    if info.writes_files:
        try:
            found = local(run_dir, resume, log)
            step = read_state(found).step if found is not None else -1
        except ValueError as err:
            error = f"node {info.node}: {err}"
    answers = _gather((error, step), info)
    errors = [e for e, _ in answers if e]
    if errors:
        raise ValueError(errors[0])
    newest = max(s for _, s in answers)
    if newest < 0:
        return None
    target = checkpoint_dir(run_dir, newest)
    lacking = info.writes_files and step != newest
    staging = target.parent / f".recv-{target.name}"
    if lacking:  # receive into a temporary folder, renamed into place once whole
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    status = _gather((info.writes_files and step == newest, lacking), info)  # (holds it, lacks it) per rank
    if any(lacks for _, lacks in status):
        source = min(r for r, (holds, _) in enumerate(status) if holds)
        _ship(target if info.rank == source else staging, info, source, lacking)
        if lacking:
            replace_folder(staging, target)
            log(f"node {info.node}: received checkpoint {target.name} from rank {source}")
        barrier(info)
    return target


def _ship(folder: Path, info: DistInfo, source: int, receive: bool) -> None:
    """Broadcast every file of `folder` on rank `source` to the ranks with `receive` (into their `folder`)."""
    listing = _gather(_listing(folder) if info.rank == source else None, info)[source]
    for name, size in listing.items():
        _broadcast_file(folder / name, size, source, info, receive=receive)
