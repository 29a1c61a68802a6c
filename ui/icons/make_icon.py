#!/usr/bin/env python3
"""Writes icons/icon.png: a 128x128 RGBA PNG (a teal rounded square with a white ring).

Tauri needs an RGBA PNG icon to build; this keeps it reproducible with only the standard
library (zlib + struct). Run from anywhere: python3 ui/icons/make_icon.py
"""
import math
import os
import struct
import zlib

SIZE = 128


def pixel(x: int, y: int) -> tuple:
    cx = cy = (SIZE - 1) / 2
    # Rounded square: inside if the distance to the inner rectangle is within the radius.
    radius, inset = 24, 4
    lo, hi = inset + radius, SIZE - 1 - inset - radius
    dx = max(lo - x, 0, x - hi)
    dy = max(lo - y, 0, y - hi)
    if math.hypot(dx, dy) > radius:
        return (0, 0, 0, 0)
    d = math.hypot(x - cx, y - cy)
    if 30 <= d <= 40 or d <= 10:
        return (255, 255, 255, 255)
    return (18, 110, 120, 255)


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def main() -> None:
    raw = bytearray()
    for y in range(SIZE):
        raw.append(0)  # filter type: none
        for x in range(SIZE):
            raw.extend(pixel(x, y))
    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + chunk(b"IEND", b"")
    )
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icon.png")
    with open(out, "wb") as f:
        f.write(png)


if __name__ == "__main__":
    main()
