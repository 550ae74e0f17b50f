"""What a data source holds, and what a set of tensors holds, each as a short string.

A source's contents are listed so that any change shows: for a folder, every file's relative path,
size and modification time (its manifest, one directory walk); for an archive, its size and a SHA-256
of its bytes, not its time, so that a copy or a new download of the same bytes is the same archive.
A checksum of tensors (SHA-256 over their names, dtypes, shapes and bytes) tells whether tensors are
the ones written, and is the data's content fingerprint: equal for equal pixels and labels, wherever
they came from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

FINGERPRINT_LENGTH = 16  # hex digits kept: 64 bits, plenty to tell data sets apart


def contents(source: Path) -> list[str]:
    """One line per thing the source holds that may change: its manifest for a folder, one line for a file."""
    if source.is_dir():
        return manifest(source)
    stat = source.stat()
    with open(source, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return [f"{source.name}\t{stat.st_size}\tsha256:{digest}"]


def manifest(root: Path) -> list[str]:
    """'relative/path<TAB>size<TAB>mtime_ns' of every file under root (links followed), sorted."""
    lines, folders, prefix = [], [str(root)], len(str(root)) + 1
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    folders.append(entry.path)
                elif entry.is_file():
                    stat = entry.stat()
                    relative = entry.path[prefix:].replace(os.sep, "/")
                    lines.append(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return sorted(lines)


def key(lines: list[str]) -> str:
    """A short string that changes whenever any line does."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def changes(before: list[str], now: list[str]) -> str:
    """What changed between two listings, in a few words: 'train/cat/0001.png removed', '3 files changed (...)'."""
    old, new = (dict(line.split("\t", 1) for line in lines) for lines in (before, now))
    kinds = {
        "removed": sorted(old.keys() - new.keys()),
        "added": sorted(new.keys() - old.keys()),
        "changed": sorted(name for name in old.keys() & new.keys() if old[name] != new[name]),
    }
    said = [
        f"{files[0]} {kind}" if len(files) == 1 else f"{len(files)} files {kind} ({files[0]}, ...)"
        for kind, files in kinds.items()
        if files
    ]
    return ", ".join(said) or "the listing changed"


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order; the first 16 hex digits."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().data)  # the bytes themselves, not a copy
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
