"""Text metadata that JPEG / WebP pictures carry in EXIF (read with Pillow's getexif, no new deps).

- A1111 / Forge (modules/images.py save_image_with_geninfo): the `parameters` text as the
  Exif IFD's UserComment (tag 0x9286), encoded as piexif.helper.UserComment.dump(...,
  encoding="unicode") writes it: the 8-byte code b"UNICODE\\0", then UTF-16 big-endian. Other
  writers use b"ASCII\\0\\0\\0", little-endian UTF-16 or no code at all; all are read.
- ComfyUI's WebP savers: "prompt:<json>" in IFD0's Model (0x0110) and "workflow:<json>" (and
  any other extra_pnginfo key) counting down from Make (0x010F).
"""
from __future__ import annotations

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_CODES = {b"UNICODE\x00": "utf-16", b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis",
          b"\x00" * 8: "undefined"}
_COMFY_TAGS = range(0x0110, 0x0100, -1)  # Model, Make, then downwards


def _utf16(body: bytes) -> str:
    """UTF-16 of either byte order: a BOM decides, else the order that gives more ASCII text."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    body = body[: len(body) // 2 * 2]
    be, le = body.decode("utf-16-be", errors="replace"), body.decode("utf-16-le", errors="replace")
    ascii_count = lambda s: sum(c < "\x80" for c in s)  # noqa: E731
    return be if ascii_count(be) >= ascii_count(le) else le


def decode_user_comment(raw) -> str:
    """An EXIF UserComment value (bytes with its 8-byte character code, or already text) as text."""
    if isinstance(raw, str):
        return raw.rstrip("\x00")
    raw = bytes(raw or b"")
    code = _CODES.get(raw[:8])
    if code == "utf-16":
        text = _utf16(raw[8:])
    elif code is not None:
        text = raw[8:].decode("utf-8" if code == "undefined" else code, errors="replace")
    else:
        text = raw.decode("utf-8", errors="replace")  # no code: A1111's own fallback
    return text.rstrip("\x00")


def exif_text(image) -> dict[str, str]:
    """{"parameters": ..., "prompt": ..., "workflow": ...} (those present) from a PIL image's EXIF."""
    try:
        exif = image.getexif()
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block reads as none
        return {}
    out = {}
    comment = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
    if comment:
        text = decode_user_comment(comment)
        if text.strip():
            out["parameters"] = text
    for tag in _COMFY_TAGS:
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str) and ":" in value:
            key, _, body = value.partition(":")
            if key in ("prompt", "workflow") and body.lstrip().startswith("{"):
                out.setdefault(key, body.rstrip("\x00"))
    return out
