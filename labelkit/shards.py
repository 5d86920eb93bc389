"""Per-rank result shards that survive a kill, so a labeling run can resume and still write exactly once.

A run's shard folder holds one JSONL file per rank. Every line is the complete result of one input item
(an image), carrying the item's integer key; each rank appends its lines and flushes them after every
batch. A run killed at any moment (SIGKILL included) leaves complete lines plus at most one partial last
line per file: the partial line is ignored when reading and cut off before a rank appends again. The
keys present tell a restarted run what to skip. The merge reads all shards, whatever number of ranks or
attempts wrote them, and yields the records in key order, each key once; it holds only a compact index
(file, offset) in memory, never the records. Reading the keys (to resume, or to build that index) parses
only the start of a line whose first field is the key, as the labelers write their records.

A manifest (`run.json`) records what produced the shards; a restart with other inputs or settings is
refused instead of silently mixing two runs. Shards without one finished item are discarded when a run
starts, manifest and all: a run that failed before its first result (a bad prompt or threshold) leaves
nothing that blocks the corrected command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from labelkit.cli import Terminated
from labelkit.writers import atomic_write, dumps

MANIFEST = "run.json"
log = logging.getLogger(__name__)


class ShardError(ValueError):
    """Shards that cannot be used for this run; the message names the folder or file and line."""


class StrictSkipError(ValueError):
    """An item was skipped (undecodable image, missing file) in a run that was told to be strict."""


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (identifies the input a run's shards belong to)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(module) -> str:
    """sha256 of a module's parameters and buffers (identifies the weights a run's shards came from)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _complete_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) for every newline-terminated line; a partial last line is skipped."""
    offset = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if line.endswith(b"\n"):
                yield number, offset, line
            offset += len(line)


def _complete_size(path: Path) -> int:
    """Length of the file up to and including its last newline."""
    size = 0
    for _, offset, line in _complete_lines(path):
        size = offset + len(line)
    return size


# a shard line as `dumps` writes it starts with the key, an integer: `{"index":12,...`
_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)(?=[,}])")


def _not_a_record(path: Path, number: int, reason) -> ShardError:
    return ShardError(f"{path}: line {number}: not a result record ({reason}); rerun with --fresh")


def _parse_key(path: Path, number: int, line: bytes, key: str) -> int:
    """The key of a shard line that does not start with it: parse the whole record."""
    try:
        return json.loads(line)[key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise _not_a_record(path, number, e) from None


def _line_number(path: Path, offset: int) -> int:
    return next(number for number, start, _ in _complete_lines(path) if start == offset)


class ShardStore:
    """A folder of per-rank JSONL shards keyed by the integer field `key` of each record."""

    def __init__(self, directory: str | Path, key: str):
        self.directory = Path(directory)
        self.key = key
        self._file = None

    def shard_path(self, rank: int) -> Path:
        return self.directory / f"rank{rank:05d}.jsonl"

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob("rank*.jsonl"))

    def write_manifest(self, fingerprint: dict) -> None:
        """Main process only: record what this run is made of, unless earlier shards already did."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / MANIFEST).is_file():
            with atomic_write(self.directory / MANIFEST) as f:
                f.write(json.dumps(fingerprint, indent=1, sort_keys=True, default=str) + "\n")

    def check(self, fingerprint: dict) -> None:
        """Every process, after `write_manifest`: refuse shards left by a run with other inputs or settings."""
        recorded = json.loads((self.directory / MANIFEST).read_text(encoding="utf-8"))
        current = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        if recorded != current:
            changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
            raise ShardError(
                f"{self.directory} holds partial results of a run with different {', '.join(changed)}; "
                "start over with --fresh (or delete that folder) to discard them"
            )

    def keys_with_offsets(self, paths: list[Path]) -> Iterator[tuple[int, int, int]]:
        """(index into `paths`, byte offset, key) of every complete line; keys are read without parsing records."""
        prefix = ("{" + dumps(self.key) + ":").encode()
        for file_index, path in enumerate(paths):
            for number, offset, line in _complete_lines(path):
                whole = line.startswith(prefix) and line.endswith(b"}\n")  # else parse it: report damage now
                match = _INT.match(line, len(prefix)) if whole else None
                key = int(match[0]) if match else _parse_key(path, number, line, self.key)
                yield file_index, offset, key

    def done_keys(self) -> set[int]:
        """Keys of the items whose results are complete on disk."""
        if not self.directory.is_dir():
            return set()
        return {key for _, _, key in self.keys_with_offsets(self.shards())}

    def open(self, rank: int) -> None:
        """Start appending this rank's results, first cutting off a partial last line a kill left behind."""
        path = self.shard_path(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("r+b") as f:
                f.truncate(_complete_size(path))
        self._file = path.open("a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        """Append one batch of records and flush it to the OS, so a killed process loses no finished item."""
        self._file.write("".join(dumps(r) + "\n" for r in records))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def index(self) -> MergedShards:
        """Scan the shards once; the result can be read in key order as many times as wanted."""
        return MergedShards(self)

    def merged(self) -> Iterator[dict]:
        """All records in key order, each key once (a key written twice, by two attempts, is the same item)."""
        yield from self.index()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class MergedShards:
    """The records of a ShardStore in key order, each key once, read from disk on every iteration.

    Built by one scan that reads only each line's key; what stays in memory is the file and byte
    offset of every kept line (16 bytes an item), never the records.
    """

    def __init__(self, store: ShardStore):
        self.paths = store.shards()
        files, offsets, keys = array("q"), array("q"), array("q")
        for file_index, offset, key in store.keys_with_offsets(self.paths):
            files.append(file_index)
            offsets.append(offset)
            keys.append(key)
        keys = np.frombuffer(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")  # a key written twice keeps its first line
        first = np.ones(len(order), dtype=bool)
        first[1:] = keys[order[1:]] != keys[order[:-1]]
        order = order[first]
        self.files = np.frombuffer(files, dtype=np.int64)[order]
        self.offsets = np.frombuffer(offsets, dtype=np.int64)[order]

    def __iter__(self) -> Iterator[dict]:
        handles = [p.open("rb") for p in self.paths]
        try:
            for file_index, offset in zip(self.files, self.offsets):
                handle = handles[file_index]
                handle.seek(offset)
                line = handle.readline()
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    path = self.paths[file_index]
                    raise _not_a_record(path, _line_number(path, offset), e) from None
                yield record
        finally:
            for handle in handles:
                handle.close()


class ShardedPredictionWriter(BasePredictionWriter):
    """The Lightning side of a ShardStore: resume at setup, append every batch, merge once at teardown.

    With `write_in_thread` (by default: when the model is not on a CPU) a batch's records (RLE encoding,
    JSON) are made and appended in a writer thread while the next batch runs on the accelerator; at most
    one batch waits there, so memory stays flat, and an error of the writer thread is raised in the main
    loop at the next batch or at the end. On a CPU the model already keeps every core busy: records are
    made inline.

    Barriers sit only in `setup` and `teardown`, which every rank runs: a rank left with no images
    (a small input, or a resumed run) skips Lightning's predict hooks altogether and must not be waited
    for there. Subclasses say what identifies a run (`fingerprint`), what a batch's records are
    (`records`) and how the final files are made (`merge`, rank 0, returns the run's counts).
    """

    def __init__(
        self,
        shard_dir: str | Path,
        key: str,
        fresh: bool = False,
        keep_shards: bool = False,
        write_in_thread: bool | None = None,
    ):
        super().__init__(write_interval="batch")
        self.store = ShardStore(shard_dir, key)
        self.fresh, self.keep_shards, self.write_in_thread = fresh, keep_shards, write_in_thread
        self.resumed: set[int] = set()
        self.summary: dict | None = None
        self._fingerprint: dict | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def fingerprint(self, trainer, pl_module) -> dict:
        raise NotImplementedError

    def records(self, trainer, prediction, batch) -> list[dict]:
        raise NotImplementedError

    def merge(self, trainer) -> dict:
        raise NotImplementedError

    def skip_reason(self, record: dict) -> str | None:
        """Why the item of `record` was skipped ("file: reason"), or None when it was labelled."""
        raise NotImplementedError

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before the data is split over ranks: find the items an interrupted run already finished."""
        if stage != "predict":
            return
        trainer.predict_loop.return_predictions = False  # results go to disk, not into a list
        self.resumed = set() if self.fresh else self.store.done_keys()  # damaged shards: every rank raises
        trainer.strategy.barrier()  # every rank has read the same keys before the folder changes
        if not self.resumed and trainer.is_global_zero:  # --fresh, or a run that failed before its first result
            self.store.remove()  # (a bad prompt or threshold): nothing to resume, its manifest must not block this run
        trainer.strategy.barrier()  # and no rank writes its manifest before that
        trainer.datamodule.predict_skip = self.resumed
        self._fingerprint = self.summary = None
        if self.resumed and trainer.is_global_zero:
            log.info("resuming: %d items already done in %s", len(self.resumed), self.store.directory)

    def _check_fingerprint(self, trainer, pl_module) -> None:
        """With the weights loaded: refuse to mix these results with those of a different run. The device type
        is part of every fingerprint: the same weights and precision compute other low bits on a GPU."""
        if self._fingerprint is None:
            fingerprint = {**self.fingerprint(trainer, pl_module), "device": pl_module.device.type}
            self.store.write_manifest(fingerprint)  # every rank computes the same one; the first one stays
            self.store.check(fingerprint)
            self._fingerprint = fingerprint

    def on_predict_start(self, trainer, pl_module) -> None:
        self._check_fingerprint(trainer, pl_module)
        self.store.open(trainer.global_rank)
        in_thread = self.write_in_thread if self.write_in_thread is not None else pl_module.device.type != "cpu"
        if in_thread:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        strict = getattr(trainer.datamodule, "strict", False)
        if self._writer is None:
            self.write_batch(trainer, prediction, batch, strict)
            return
        self._wait_for_writer()
        self._pending = self._writer.submit(self.write_batch, trainer, prediction, batch, strict)

    def _wait_for_writer(self) -> None:
        """Let the writer thread finish its batch; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _stop_writer(self) -> None:
        try:
            self._wait_for_writer()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def on_predict_end(self, trainer, pl_module) -> None:
        self._stop_writer()

    def write_batch(self, trainer, prediction, batch, strict: bool) -> None:
        """Append the batch's records; with `strict`, a skipped item stops the run instead.

        In strict mode the skipped item's record is not written, so that a run started again after the
        input is fixed labels it.
        """
        records = self.records(trainer, prediction, batch)
        skipped = [reason for r in records if (reason := self.skip_reason(r)) is not None]
        if skipped and strict:
            self.store.write([r for r in records if self.skip_reason(r) is None])
            raise StrictSkipError(
                f"--strict: {skipped[0]}"
                + (f" (and {len(skipped) - 1} more in this batch)" if len(skipped) > 1 else "")
                + f"; the results so far are kept in {self.store.directory}: fix or remove the input and "
                "run the same command again to resume"
            )
        self.store.write(records)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Ctrl-C, SIGTERM or a failure: keep every finished result on disk and say how to go on."""
        try:
            self._stop_writer()  # the batch in the writer thread is finished and kept
        except Exception as e:  # the run already fails with `exception`: report this one, raise that one
            log.warning("the last batch could not be written: %s", e)
        self.store.close()
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            stop = "terminated (SIGTERM)" if isinstance(exception, Terminated) else "interrupted"
            print(
                f"{stop}: the finished results are kept in {self.store.directory}; run the same command "
                "again to resume (--fresh to start over)",
                file=sys.stderr,
            )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        self.store.close()
        trainer.strategy.barrier()
        failure = None
        if trainer.is_global_zero:
            try:
                self._check_fingerprint(trainer, pl_module)
                self.summary = {**self.merge(trainer), "resumed_items": len(self.resumed)}
                if not self.keep_shards:
                    self.store.remove()
            except Exception as e:  # raised after the barrier, so the other ranks are not left waiting
                failure = e
        trainer.strategy.barrier()  # no rank moves on (e.g. to a next stage) before the files exist
        if failure is not None:
            raise failure
