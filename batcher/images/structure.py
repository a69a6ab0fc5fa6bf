"""Whether a file's bytes end where its own structure says they end.

Pillow decodes a PNG that lacks its last ~20 bytes (IEND, the last IDAT's CRC, part of the zlib
checksum) without complaint, and a GIF without its trailer; a truncated WebP or JPEG 2000 fails with
"could not create decoder object" or "broken data stream", which says nothing about why. So before a
file is sent as it is, and to type a cut-off file ``truncated`` whatever its decoder says,
:func:`examine` walks the container: chunk, block and box lengths, never decompressing anything
(PNG chunk CRCs are checked, a pass over the bytes far cheaper than any decode).

* **PNG**: chunks (length, type, data, CRC) up to an IEND chunk; every CRC is checked; an APNG
  control chunk marks it animated.
* **GIF**: header, colour tables, extension and image blocks with their sub-blocks, up to the
  ``0x3B`` trailer; more than one image marks it animated.
* **WebP**: the RIFF size field equals the file's length (minus 8).
* **JPEG 2000**: JP2 boxes, and in the codestream the main header, tile-parts by their ``Psot``
  lengths, and the EOC marker.
* **JPEG**: the file ends with EOI. A JPEG cut short is already ``truncated`` from libjpeg; one that
  does not end with EOI has data after it (or is cut in a way this check cannot tell), so it is only
  not sent as it is.

Any other format, or a structure this walk cannot follow, is :attr:`State.UNKNOWN`: the decoder's
verdict stands, and the bytes are re-encoded rather than sent as they are.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_SOC = b"\xff\x4f\xff\x51"  # SOC followed by SIZ: a raw JPEG 2000 codestream
JPEG_SOI = b"\xff\xd8\xff"


class State(enum.Enum):
    COMPLETE = "complete"  # the structure ends exactly where the file does
    TRAILING = "trailing"  # complete, with more bytes after its end
    TRUNCATED = "truncated"  # the file ends inside the structure
    UNKNOWN = "unknown"  # not a format walked here, or a structure this walk cannot follow


@dataclass(frozen=True)
class Ending:
    state: State
    #: Why, for messages (empty when complete).
    reason: str = ""
    #: The structure carries animation: an APNG control chunk (even one Pillow rejects and reads as a
    #: still image) or more than one GIF image. Such bytes are never sent as they are.
    animated: bool = False

    @property
    def complete(self) -> bool:
        return self.state is State.COMPLETE

    @property
    def truncated(self) -> bool:
        return self.state is State.TRUNCATED


COMPLETE = Ending(State.COMPLETE)


def examine(data: bytes) -> Ending:
    """Where ``data``'s structure ends relative to the end of the bytes (see the module docstring)."""
    if data.startswith(PNG_SIGNATURE):
        return _png(data)
    if data.startswith((b"GIF87a", b"GIF89a")):
        return _gif(data)
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data.startswith(JP2_SIGNATURE):
        return _jp2(data)
    if data.startswith(J2K_SOC):
        return _codestream(data, 0, len(data))
    if data.startswith(JPEG_SOI):
        return _jpeg(data)
    return Ending(State.UNKNOWN, "a format whose structure is not checked")


def _truncated(reason: str) -> Ending:
    return Ending(State.TRUNCATED, reason)


def _png(data: bytes) -> Ending:
    size = len(data)
    pos = len(PNG_SIGNATURE)
    animated = False
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            return _truncated(
                f"PNG ends inside a {kind.decode('latin-1')!r} chunk, {size - pos} of its "
                f"{12 + length} bytes present, before a complete IEND chunk"
            )
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(memoryview(data)[pos + 4 : end - 4]) != crc:
            return Ending(State.UNKNOWN, f"PNG chunk {kind.decode('latin-1')!r} has a wrong CRC")
        animated = animated or kind == b"acTL"
        if kind == b"IEND":
            if end == size:
                return Ending(State.COMPLETE, animated=animated)
            return Ending(State.TRAILING, f"{size - end} bytes after the PNG's IEND chunk", animated)
        pos = end
    return _truncated("PNG ends before its IEND chunk")


def _gif(data: bytes) -> Ending:
    size = len(data)
    if size < 13:
        return _truncated("GIF ends inside its header")
    pos = 13 + _colour_table(data[10])
    images = 0
    while pos < size:
        introducer = data[pos]
        if introducer == 0x3B:
            if pos + 1 == size:
                return Ending(State.COMPLETE, animated=images > 1)
            return Ending(State.TRAILING, f"{size - pos - 1} bytes after the GIF trailer", images > 1)
        if introducer == 0x21:  # extension: label, then sub-blocks
            pos = _sub_blocks(data, pos + 2)
        elif introducer == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            if pos + 10 > size:
                return _truncated("GIF ends inside an image descriptor")
            images += 1
            pos = _sub_blocks(data, pos + 10 + _colour_table(data[pos + 9]) + 1)
        else:
            return Ending(State.UNKNOWN, f"GIF has an unknown block 0x{introducer:02x} at byte {pos}")
        if pos < 0:
            return _truncated("GIF ends inside a data block (no trailer)")
    return _truncated("GIF ends before its trailer")


def _colour_table(packed: int) -> int:
    return 3 * (2 << (packed & 7)) if packed & 0x80 else 0


def _sub_blocks(data: bytes, pos: int) -> int:
    """The position after the sub-blocks starting at ``pos`` and their terminator; -1 if the data
    ends first."""
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return -1


def _webp(data: bytes) -> Ending:
    declared = struct.unpack_from("<I", data, 4)[0] + 8
    if declared > len(data):
        return _truncated(f"WebP declares {declared:,} bytes (RIFF size) but the file has {len(data):,}")
    if declared < len(data):
        return Ending(State.TRAILING, f"{len(data) - declared} bytes after the WebP's RIFF chunk")
    return COMPLETE


def _jpeg(data: bytes) -> Ending:
    if data.endswith(b"\xff\xd9"):
        return COMPLETE
    return Ending(State.UNKNOWN, "JPEG does not end with its EOI marker")


def _jp2(data: bytes) -> Ending:
    size = len(data)
    pos = 0
    codestream = False
    while pos < size:
        if pos + 8 > size:
            return _truncated("JPEG 2000 file ends inside a box header")
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > size:
                return _truncated("JPEG 2000 file ends inside a box header")
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:  # the last box runs to the end of the file
            length = size - pos
        if length < header:
            return Ending(State.UNKNOWN, f"JPEG 2000 box {kind!r} has an invalid length")
        end = pos + length
        if end > size:
            return _truncated(f"JPEG 2000 file ends inside its {kind.decode('latin-1')!r} box")
        if kind == b"jp2c":
            inner = _codestream(data, pos + header, end)
            if inner.state is not State.COMPLETE and inner.state is not State.TRAILING:
                return inner
            codestream = True
        pos = end
    return COMPLETE if codestream else _truncated("JPEG 2000 file ends before its codestream")


def _codestream(data: bytes, start: int, end: int) -> Ending:
    """A JPEG 2000 codestream in ``data[start:end]``: SOC, main header, tile-parts, EOC."""
    if data[start : start + 2] != b"\xff\x4f":
        return Ending(State.UNKNOWN, "JPEG 2000 codestream does not start with SOC")
    pos = start + 2
    while pos + 2 <= end:
        (marker,) = struct.unpack_from(">H", data, pos)
        if marker == 0xFFD9:  # EOC
            if pos + 2 == end:
                return COMPLETE
            return Ending(State.TRAILING, f"{end - pos - 2} bytes after the codestream's EOC marker")
        if marker >> 8 != 0xFF:
            return Ending(State.UNKNOWN, f"JPEG 2000 codestream has no marker at byte {pos}")
        if marker == 0xFF90:  # SOT: Psot is the tile-part's length from this marker on
            if pos + 10 > end:
                break
            (psot,) = struct.unpack_from(">I", data, pos + 6)
            if psot == 0:  # the last tile-part runs up to EOC
                if data[end - 2 : end] == b"\xff\xd9":
                    return COMPLETE
                break
            pos += psot
            continue
        if pos + 4 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        pos += 2 + length
    return _truncated("JPEG 2000 codestream ends before its EOC marker")
