"""Reading encoded images and telling good files from bad ones: ONE set of rules for both loaders
and the pre-flight check (scob_fast.data.preflight), so that they reject the same files.

From the bytes and the header alone, a file is bad when it is
- missing, unreadable or empty, or has no signature of a format both decoders read;
- structurally broken: a JPEG marker structure that libjpeg (PIL's decoder) refuses (an unknown
  marker type, a malformed table or header, a second start-of-image) but DALI's decoder goes past,
  training on the garbage; a PNG chunk whose CRC does not match, which libpng (DALI's decoder)
  refuses but PIL never checks in image data. Checking the structure ourselves makes both loaders
  agree without decoding twice;
- larger than `max_pixels` according to its header (the decompression-bomb limit; default PIL's
  own, 89,478,485 pixels); DALI would decode a 196-megapixel bomb that PIL refuses;
- truncated: a JPEG or PNG whose end marker is not near the end of the file is decoded once with PIL
  to decide (trailing bytes after the end marker are common and harmless).
A file that passes can still fail to decode (corrupt entropy-coded data that libjpeg treats as
fatal); the PIL loader then skips it, the DALI loader finds it when its pipeline fails, and the
pre-flight check with full_decode=True finds every such file before training starts.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# PIL's default Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3), fixed here so that a library
# that changes PIL's global does not change which images a run trains on.
DEFAULT_MAX_PIXELS = 89_478_485

# Signatures of the formats DALI's image decoder handles (PIL decodes them too), with PIL's format name.
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
)
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tiff": "TIFF", "jpeg2000": "JPEG2000",
               "webp": "WEBP", "pnm": "PPM"}
_TAIL = 4096

PROBLEM_KINDS = ("missing", "unreadable", "empty", "not an image", "truncated", "corrupt", "too large")


@dataclass(frozen=True)
class ImageProblem:
    """Why a file cannot be trained on: `kind` (one of PROBLEM_KINDS) and a one-line `detail`."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def image_format(data: bytes | np.ndarray) -> str | None:
    head = bytes(data[:12])
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 2 and head[:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    return None


# -- structure -------------------------------------------------------------------------------------
# Marker types libjpeg (jdmarker.c) knows; any other one stops it with "Unsupported marker type".
_JPEG_KNOWN = frozenset(range(0xC0, 0xDE)) | frozenset(range(0xE0, 0xF0)) | {0x01, 0xFE}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SKIPPED = frozenset(range(0xE0, 0xF0)) | {0xDC, 0xFE}  # APPn, DNL, COM: libjpeg skips their bodies


def _huffman_problem(counts: bytes) -> str | None:
    """libjpeg's check of a Huffman table (jdhuff.c): the codes of each length must fit the code space."""
    code = 0
    for length, count in enumerate(counts, start=1):
        code += count
        if code > 1 << length:
            return "bad Huffman table definition"
        code <<= 1
    return None


def _jpeg_segment_problem(marker: int, body: bytes) -> str | None:
    """What libjpeg (jdmarker.c, jdhuff.c) refuses in the body of one marker segment it parses:
    Huffman and quantisation tables, frame and scan headers, the restart interval."""
    if marker == 0xC4:  # DHT: tables of (class/id, 16 code counts, values)
        pos = 0
        while pos < len(body):
            if body[pos] not in (0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13) or pos + 17 > len(body):
                return "bad Huffman table definition"
            counts = body[pos + 1:pos + 17]
            pos += 17 + sum(counts)
            if sum(counts) > 256 or pos > len(body):
                return "bad Huffman table definition"
            problem = _huffman_problem(counts)
            if problem is not None:
                return problem
    elif marker == 0xDB:  # DQT: tables of (precision/id, up to 64 entries); libjpeg-turbo accepts short ones
        pos = 0
        while pos < len(body):
            if body[pos] & 0x0F > 3:
                return "bad quantisation table definition"
            pos += 1 + 64 * (2 if body[pos] >> 4 else 1)
    elif marker in _SOF:  # precision, height, width, then (id, sampling factors, quantisation table) each
        if len(body) < 6 or len(body) != 6 + 3 * body[5] or body[5] == 0:
            return "bad frame header"
        if int.from_bytes(body[1:3], "big") == 0 or int.from_bytes(body[3:5], "big") == 0:
            return "frame header says the image has no pixels"
        for k in range(body[5]):
            sampling, table = body[7 + 3 * k], body[8 + 3 * k]
            if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 0x0F <= 4) or table > 3:
                return "bad frame header (component sampling or table)"
    elif marker == 0xDA:  # SOS: component count, then (id, DC/AC table selectors) each
        if not body or not 1 <= body[0] <= 4 or len(body) != 4 + 2 * body[0]:
            return "bad scan header"
        if any(body[2 + 2 * k] >> 4 > 3 or body[2 + 2 * k] & 0x0F > 3 for k in range(body[0])):
            return "bad scan header (table selector)"
    elif marker == 0xDD and len(body) != 2:  # DRI
        return "bad restart interval"
    return None


def _jpeg_problem(data: np.ndarray, truncated: bool) -> str | None:
    """Walk a JPEG's markers like libjpeg does: None when it reaches EOI, else what is wrong. Bytes
    between segments are skipped, as libjpeg does with a warning. Running out of bytes is left to
    the truncation rule (`truncated`: no EOI near the end) unless the file ends with EOI: then a
    segment claimed the EOI as its own."""
    ff = np.flatnonzero(data[:-1] == 0xFF)
    following = data[ff + 1]
    # Between segments a marker is FF then a byte other than FF (fill) and 00 (libjpeg discards FF
    # 00); in entropy-coded data FF D0-D7 (restart markers) do not end the scan either.
    markers = ff[(following != 0x00) & (following != 0xFF)]
    scan_ends = markers[(data[markers + 1] < 0xD0) | (data[markers + 1] > 0xD7)]
    size, pos, in_scan, components = len(data), 2, False, None
    while True:
        found = scan_ends if in_scan else markers
        k = np.searchsorted(found, pos)
        if k == len(found):
            return None
        pos, in_scan = int(found[k]), False
        marker = int(data[pos + 1])
        where = f"(segment 0xFF{marker:02X} at byte {pos})"
        if marker not in _JPEG_KNOWN:
            return f"unknown JPEG marker {where}"
        if marker == 0xD9:
            return None
        if marker == 0xD8:
            return f"a second start-of-image marker {where}"
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        length = int(data[pos + 2]) << 8 | int(data[pos + 3]) if pos + 4 <= size else size
        if pos + 2 + length > size:
            # libjpeg skips past the end of the data without complaint, but a table or header it
            # parses cannot end there
            if truncated or marker in _JPEG_SKIPPED:
                return None
            return f"a segment longer than the rest of the file {where}"
        if length < 2:
            return f"segment length {length} {where}"
        body = b"" if marker in _JPEG_SKIPPED else data[pos + 4:pos + 2 + length].tobytes()
        problem = _jpeg_segment_problem(marker, body)
        if problem is None and marker in _SOF:
            problem = "a second frame header" if components is not None else None
            components = set(body[6::3])
        if problem is None and marker == 0xDA:
            if components is None:
                problem = "a scan before the frame header"
            elif not set(body[1:1 + 2 * body[0]:2]) <= components:
                problem = "a scan of a component the frame header does not declare"
        if problem is not None:
            return f"{problem} {where}"
        pos += 2 + length
        in_scan = marker == 0xDA


def _png_problem(data: np.ndarray) -> str | None:
    """Every chunk's CRC up to IEND (None when the bytes run out first: the truncation rule decides).
    libpng stops on a bad CRC in image data that PIL never checks, so both loaders refuse it."""
    raw = memoryview(data)
    pos = 8
    while pos + 12 <= len(raw):
        length = int.from_bytes(raw[pos:pos + 4], "big")
        kind = raw[pos + 4:pos + 8].tobytes()
        if length > 0x7FFFFFFF or not kind.isalpha():
            return f"bad PNG chunk header at byte {pos}"
        end = pos + 12 + length
        if end > len(raw):
            return None
        if zlib.crc32(raw[pos + 4:end - 4]) != int.from_bytes(raw[end - 4:end], "big"):
            return f"PNG chunk {kind.decode('ascii')} at byte {pos} fails its CRC check"
        if kind == b"IEND":
            return None
        pos = end
    return None


def _looks_truncated(data: np.ndarray, fmt: str) -> bool:
    """No end marker (JPEG EOI, PNG IEND) near the end of the file: the usual sign of truncation."""
    end = {"jpeg": b"\xff\xd9", "png": b"IEND"}.get(fmt)
    return end is not None and end not in memoryview(data)[-_TAIL:].tobytes()


# -- PIL -------------------------------------------------------------------------------------------
def _open(data: bytes | np.ndarray, fmt: str | None) -> Image.Image:
    """A lazy PIL image (header read, pixels not decoded). Opened through the format's own plugin:
    Image.open would also apply PIL's global decompression-bomb limit, and the limit that decides
    here is `max_pixels` (checked from the header by `check_encoded`)."""
    name = _PIL_FORMAT.get(fmt or "")
    Image.preinit()
    if name is not None and name not in Image.OPEN:
        Image.init()
    if name not in Image.OPEN:
        return Image.open(io.BytesIO(memoryview(data)))
    factory, _ = Image.OPEN[name]
    return factory(io.BytesIO(memoryview(data)), "")


def decode_pil(data: bytes | np.ndarray) -> Image.Image:
    """RGB PIL image of encoded bytes (grayscale, CMYK, palette and alpha images converted; EXIF
    orientation applied, as DALI's decoder does). Raises on a corrupt or truncated file."""
    with _open(data, image_format(data)) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def decode_checked(data: np.ndarray) -> tuple[Image.Image | None, ImageProblem | None]:
    """(RGB image, None), or (None, why it does not decode)."""
    try:
        return decode_pil(data), None
    except Exception as exc:  # any decoder failure means the file is unusable
        fmt = image_format(data) or "image"
        return None, ImageProblem("corrupt", f"{fmt} does not decode ({type(exc).__name__}: {exc})")


# -- the rules -------------------------------------------------------------------------------------
def check_encoded(data: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageProblem | None:
    """The shared verdict on a file's bytes (see the module doc); None: train on it."""
    if data.size == 0:
        return ImageProblem("empty", "the file has 0 bytes")
    fmt = image_format(data)
    if fmt is None:
        head = bytes(data[:8])
        return ImageProblem("not an image", f"no known image signature (the file starts with {head!r})")
    truncated = _looks_truncated(data, fmt)
    structure = _jpeg_problem(data, truncated) if fmt == "jpeg" else _png_problem(data) if fmt == "png" else None
    if structure is not None:
        return ImageProblem("corrupt", structure)
    try:
        with _open(data, fmt) as image:
            width, height = image.size
    except Exception as exc:  # PIL cannot parse the header
        if truncated:
            return ImageProblem("truncated", f"{fmt} that ends inside its header ({type(exc).__name__}: {exc})")
        return ImageProblem("corrupt", f"unreadable {fmt} header ({type(exc).__name__}: {exc})")
    if width * height > max_pixels:
        return ImageProblem("too large", f"{width} x {height} = {width * height:,} pixels, more than the "
                                         f"decompression-bomb limit of {max_pixels:,} (max_pixels)")
    if truncated:
        try:
            decode_pil(data)
        except Exception as exc:  # any decoder failure means the file is unusable
            return ImageProblem("truncated", f"{fmt} without its end marker that does not decode "
                                             f"({type(exc).__name__}: {exc})")
    return None


def read_file(path: str) -> tuple[np.ndarray | None, ImageProblem | None]:
    """(the file's bytes as a uint8 array, None), or (None, why it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8), None
    except FileNotFoundError:
        return None, ImageProblem("missing", "no such file")
    except IsADirectoryError:
        return None, ImageProblem("unreadable", "a directory, not a file")
    except OSError as exc:
        return None, ImageProblem("unreadable", exc.strerror or str(exc))


def read_encoded(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, ImageProblem | None]:
    """(bytes as uint8 array, None) for a file the rules accept, else (None, the problem)."""
    data, problem = read_file(path)
    if problem is None:
        problem = check_encoded(data, max_pixels)
    return (None, problem) if problem is not None else (data, None)
