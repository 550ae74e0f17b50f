"""The decoded-data cache: the data or nothing.

A cache file holds tensors, the listing of the source they were decoded from (fingerprint.contents)
and a checksum of the tensors. It is used only when the source still lists the same and the tensors,
read back, match their checksum; otherwise `read` says why in one line (Unusable) and the caller
decodes again. Each source has one cache file, named after the source's path: rewriting it replaces
the old one, and `write` removes caches of an older format and caches whose source is gone, so the
folder never grows with each change of a source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import shown_path
from . import fingerprint
from .atomic import replacing

VERSION = 3  # 2: keyed by the source's contents, checksummed; 3: an archive by its bytes alone. Bump when
# what a cache holds or how it is keyed changes (older caches are then decoded again and removed)


class Unusable(Exception):
    """A cache that must not be used; the message says why, in one line."""


@dataclass
class Cached:
    tensors: dict[str, torch.Tensor]
    label: str  # how results name the data
    checksum: str  # fingerprint.checksum of the tensors: the data's content fingerprint


def path_for(cache_dir: Path, name: str, source: Path | None = None) -> Path:
    """<cache_dir>/<name>-<a hash of the source's path>-v<VERSION>.pt, or <name>-v<VERSION>.pt without one."""
    if source is None:
        return cache_dir / f"{name}-v{VERSION}.pt"
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{name}-{where}-v{VERSION}.pt"


def read(path: Path, listing: list[str], entries: tuple[str, ...]) -> Cached | None:
    """The cache at `path` if it was made from a source that lists as `listing` now, holds every entry
    and matches its checksum; None if there is none; Unusable (why) if it must not be used."""
    if not path.exists():
        return None
    said = f"The decoded-data cache {shown_path(path)}"
    try:
        saved = torch.load(path, weights_only=True)
        meta, tensors = saved["meta"], saved["tensors"]
    except Exception as exc:  # truncated, overwritten, another format: every reason means "decode again"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unusable(f"{said} is unreadable ({first_line})") from exc
    if meta.get("version") != VERSION:
        raise Unusable(f"{said} is of another format (version {meta.get('version')}, this code writes {VERSION})")
    if meta["key"] != fingerprint.key(listing):
        raise Unusable(
            f"{said} is stale: the source changed since it was made ({fingerprint.changes(meta['listing'], listing)})"
        )
    missing = [name for name in entries if not isinstance(tensors.get(name), torch.Tensor)]
    if missing:
        raise Unusable(f"{said} lacks {', '.join(missing)}")
    if fingerprint.checksum(tensors) != meta["checksum"]:
        raise Unusable(f"{said} is damaged: its tensors do not match their checksum")
    return Cached(tensors, meta["label"], meta["checksum"])


def label(path: Path, listing: list[str]) -> str | None:
    """The label recorded in the cache if the cache is of the source as it lists now, without reading
    its tensors (mapped, not loaded); None otherwise."""
    try:
        meta = torch.load(path, weights_only=True, mmap=True)["meta"]
        return meta["label"] if meta.get("version") == VERSION and meta["key"] == fingerprint.key(listing) else None
    except Exception:  # absent or unreadable: the caller loads, and read() says what is wrong
        return None


def write(path: Path, tensors: dict[str, torch.Tensor], label: str, listing: list[str], source: Path) -> str:
    """Write the cache atomically (never half a cache), remove superseded ones; return the checksum."""
    checksum = fingerprint.checksum(tensors)
    meta = {
        "version": VERSION,
        "source": str(source.resolve()),  # to tell when the source is gone
        "key": fingerprint.key(listing),
        "listing": listing,
        "label": label,
        "checksum": checksum,
    }
    with replacing(path) as file:  # never half a cache, whoever else writes it at the same time
        torch.save({"meta": meta, "tensors": tensors}, file)
    remove_superseded(path)
    return checksum


def remove_superseded(kept: Path) -> list[Path]:
    """Delete, beside `kept`, caches of older formats and caches whose source no longer exists."""
    removed = []
    for other in kept.parent.glob("*.pt"):
        if other != kept and superseded(other):
            other.unlink(missing_ok=True)
            removed.append(other)
    return removed


def superseded(path: Path) -> bool:
    version = path.stem.rpartition("-v")[2]
    if version != str(VERSION):
        return version.isdigit() and int(version) < VERSION  # an older format's cache: never read again
    try:
        source = torch.load(path, weights_only=True, mmap=True)["meta"]["source"]
    except Exception:  # unreadable: read() replaces it when its source is next loaded
        return False
    return not Path(source).exists()
