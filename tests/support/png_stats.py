"""Prints `WIDTH HEIGHT COLOURS` of a PNG (8-bit RGB/RGBA or greyscale, not interlaced),
COLOURS being the number of distinct pixel values, counted up to 1000: enough to tell a
rendered page from a blank one. Standard library only (zlib)."""
import struct
import sys
import zlib

data = open(sys.argv[1], "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit("not a PNG")
pos, idat, width = 8, b"", None
while pos < len(data):
    (length,) = struct.unpack(">I", data[pos : pos + 4])
    kind = data[pos + 4 : pos + 8]
    body = data[pos + 8 : pos + 8 + length]
    if kind == b"IHDR":
        width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        if depth != 8 or interlace != 0 or ctype not in (0, 2, 4, 6):
            sys.exit(f"unsupported PNG: depth {depth} colour type {ctype} interlace {interlace}")
        bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    elif kind == b"IDAT":
        idat += body
    pos += 12 + length
raw = zlib.decompress(idat)
stride = width * bpp
prev = bytearray(stride)
colours = set()
for y in range(height):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1:
            line[i] = (line[i] + a) & 255
        elif f == 2:
            line[i] = (line[i] + b) & 255
        elif f == 3:
            line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 255
    if len(colours) < 1000:
        for x in range(0, stride, bpp * 7):
            colours.add(bytes(line[x : x + bpp]))
    prev = line
print(width, height, len(colours))
