"""What a file that is not a checkpoint actually is, from its first bytes (torch-free): the words error
messages use so a user who passed the wrong file sees what they passed, not a parser's IndexError."""

from __future__ import annotations

from pathlib import Path

SNIFF_BYTES = 512
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_PROTOCOL_2 = b"\x80\x02"  # torch.save's legacy format starts with a protocol-2 pickle (its magic number)

# first bytes of files people pass by mistake -> what to call them
_KNOWN = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF", "an HDF5 file (Keras?)"),
)


def head_bytes(path: Path, n: int = SNIFF_BYTES) -> bytes:
    """The first `n` bytes of `path` (fewer for a shorter file)."""
    with open(path, "rb") as f:
        return f.read(n)


def looks_like_text(head: bytes) -> bool:
    """True for bytes that decode as UTF-8 text without NUL or other control characters (tab/newline allowed).
    Binary weights never pass: a Darknet header and a torch zip both hold NUL bytes in their first 20 bytes."""
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a multi-byte character cut at the sniff boundary
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def describe(head: bytes, size: int) -> str | None:
    """A few words naming what a non-checkpoint file is ('empty (0 bytes)', "a text file (starts with 'x')"),
    or None when nothing recognisable is seen."""
    if size == 0:
        return "empty (0 bytes)"
    if looks_like_text(head):
        first = head.decode("utf-8", errors="replace").strip().splitlines()
        start = (first[0] if first else "")[:40]
        return f"a text file (it starts with {start!r})"
    for magic, name in _KNOWN:
        if head.startswith(magic):
            return name
    return None
