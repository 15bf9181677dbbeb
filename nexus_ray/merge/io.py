"""Streaming safetensors I/O: memory-mapped reads, pre-laid-out sharded writes, atomic commit.

The writer knows every output tensor's name, dtype and shape from the plan, so it lays out
the shards (headers and offsets) up front and each merged tensor is written straight to its
place with ``os.pwrite``, in any order, as soon as it is ready: memory holds the tensors being
merged, never a shard. Everything goes to a temporary sibling directory (``.OUT.partial-<pid>``)
that is renamed to the output at the end. Each shard's header (and the index) is written last,
after its data is on disk: until then the header area is zeros, which no safetensors loader
accepts, so a merge killed at any point leaves no file that loads as a model. The next merge to
the same output removes the partial directories of dead processes.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {v: k for k, v in ST_DTYPES.items()}
INDEX = "model.safetensors.index.json"
SIDE_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


class ModelReader:
    """Tensor names, shapes and dtypes of a (possibly sharded) safetensors checkpoint, from the
    headers; ``get`` returns a tensor memory-mapped from its shard, without a copy.

    The shards are mapped copy-on-write (private): a tensor's pages come straight from the page
    cache as a merge reads them, and nothing written to a tensor could reach the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        index = self.path / INDEX
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self._maps: dict[str, mmap.mmap] = {}
        self._meta: dict[str, tuple[str, int, tuple[int, ...], torch.dtype]] = {}
        for f in files:
            with open(self.path / f, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(header_len))
                size = os.fstat(fh.fileno()).st_size
                self._maps[f] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start = 8 + header_len + info["data_offsets"][0]
                self._meta[name] = (f, start, tuple(info["shape"]), TORCH_DTYPES[info["dtype"]])

    def names(self) -> list[str]:
        return list(self._meta)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][2]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name][3]

    def get(self, name: str) -> torch.Tensor:
        f, start, shape, dtype = self._meta[name]
        count = _numel(shape)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(self._maps[f], dtype=torch.uint8, count=count * dtype.itemsize, offset=start)
        return raw.view(dtype).reshape(shape)


@dataclass(frozen=True)
class Slot:
    file: str
    offset: int  # absolute byte offset in the file
    nbytes: int


def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict) -> tuple[bytes, int]:
    header: dict = {"__metadata__": metadata}
    pos = 0
    for name, dtype, shape in entries:
        n = dtype.itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return raw, pos


class ShardedWriter:
    """Writes tensors into pre-laid-out safetensors shards of at most ``shard_bytes`` each.

    The shards are created at full size with a zeroed header area; ``close`` writes the headers
    and the index only once every tensor is written and synced, so an unfinished shard never loads.
    """

    def __init__(
        self, directory: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], shard_bytes: int
    ) -> None:
        self.directory = Path(directory)
        groups: list[list] = [[]]
        size = 0
        for e in entries:
            n = e[1].itemsize * max(1, _numel(e[2]))
            if groups[-1] and size + n > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(e)
            size += n
        total = len(groups)
        self.slots: dict[str, Slot] = {}
        self._fds: dict[str, int] = {}
        self._headers: dict[str, bytes] = {}
        weight_map = {}
        total_size = 0
        for i, group in enumerate(groups):
            fname = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            header, data_bytes = _header(group, {"format": "pt"})
            start = 8 + len(header)
            fd = os.open(self.directory / fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, start + data_bytes)  # zeros: a header length of 0 loads nowhere
            self._fds[fname] = fd
            self._headers[fname] = len(header).to_bytes(8, "little") + header
            pos = start
            for name, dtype, shape in group:
                n = dtype.itemsize * _numel(shape)
                self.slots[name] = Slot(fname, pos, n)
                weight_map[name] = fname
                pos += n
            total_size += data_bytes
        self.pending = set(self.slots)
        self._index = (
            {"metadata": {"total_size": total_size}, "weight_map": weight_map} if total > 1 else None
        )

    def write(self, name: str, data: memoryview | bytes) -> None:
        slot = self.slots[name]
        if len(data) != slot.nbytes:
            raise ValueError(f"tensor {name!r}: {len(data)} bytes, the layout expects {slot.nbytes}")
        done = 0
        while done < len(data):
            done += os.pwrite(self._fds[slot.file], data[done:], slot.offset + done)
        self.pending.discard(name)

    def close(self) -> None:
        """Sync the data, then write and sync each header, then the index; with tensors missing,
        raise and leave the shards headerless (unloadable)."""
        if self.pending:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            raise RuntimeError(f"{len(self.pending)} tensors were never written, e.g. {min(self.pending)!r}")
        for fname, fd in self._fds.items():
            os.fsync(fd)  # the data before the header that makes the file loadable
            os.pwrite(fd, self._headers[fname], 0)
            os.fsync(fd)
            os.close(fd)
        self._fds.clear()
        if self._index is not None:
            (self.directory / INDEX).write_text(json.dumps(self._index, indent=2) + "\n")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is contiguous."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def copy_side_files(
    config_source: Path, tokenizer_source: Path, out: Path, out_dtype: torch.dtype | None
) -> None:
    """config.json (its dtype updated) and generation config from one model, tokenizer from another."""
    for f in SIDE_FILES:
        if (config_source / f).exists():
            shutil.copy2(config_source / f, out / f)
    if out_dtype is not None and (out / "config.json").exists():
        cfg = json.loads((out / "config.json").read_text())
        name = str(out_dtype).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = name
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in TOKENIZER_FILES:
        if (tokenizer_source / f).exists():
            shutil.copy2(tokenizer_source / f, out / f)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` (``.OUT.partial-<pid>``, ``.OUT.old-<pid>``) of
    merges whose process is gone (killed); a live process's are its work in progress and stay."""
    removed = []
    for path in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = path.name.removeprefix(f".{out.name}.").rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def temp_dir_for(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` (same filesystem, so the final rename is atomic),
    after removing what killed merges to ``out`` left behind."""
    remove_stale(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is replaced only if ``overwrite``."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite / --overwrite to replace it)")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
