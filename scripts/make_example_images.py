"""Draw the three few-shot example images of ``jobs/fewshot.toml`` into ``jobs/examples/``.

Run once (``python3 scripts/make_example_images.py``); the JPEGs are committed, and this script
keeps them reproducible (the drawing is deterministic: no randomness, fixed sizes and colours).
Each is 1200 x 900, near Claude Haiku 5.5's native size, so each costs ~1,400 input tokens, and
each is well under 80 KB. They are drawings, not photographs, but each shows something a caption
can describe precisely: a red bicycle leaning on a brick wall, a kitchen table laid for breakfast,
and a street corner with a stop sign and a street-name sign.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent.parent / "jobs" / "examples"
SIZE = (1200, 900)
#: JPEG quality: flat drawn colours compress well; every file stays well under 80 KB
QUALITY = 72


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _vertical_gradient(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    top: tuple[int, int, int],
    bottom: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(x0, y), (x1, y)], fill=colour)


def bicycle() -> Image.Image:
    """A red bicycle leaning on a brick wall, on a grey pavement, in afternoon light."""
    img = Image.new("RGB", SIZE, (170, 80, 60))
    d = ImageDraw.Draw(img)
    # brick wall: courses of bricks with pale mortar, offset every other course
    brick_h, brick_w = 45, 130
    for row, y in enumerate(range(0, 640, brick_h)):
        offset = 0 if row % 2 == 0 else brick_w // 2
        shade = 150 + (row * 7) % 30
        for x in range(-offset, SIZE[0], brick_w):
            d.rectangle([x + 3, y + 3, x + brick_w - 3, y + brick_h - 3], fill=(shade, 70 + row % 3 * 6, 52))
    d.rectangle([0, 0, SIZE[0], 640], outline=None)
    # pavement
    _vertical_gradient(d, (0, 640, SIZE[0], SIZE[1]), (150, 150, 145), (110, 110, 108))
    for x in range(0, SIZE[0], 200):
        d.line([(x, 640), (x - 80, SIZE[1])], fill=(95, 95, 92), width=3)
    # shadow of the bicycle on the wall
    d.polygon([(330, 630), (900, 630), (960, 560), (400, 560)], fill=(120, 55, 42))
    # wheels
    red = (200, 30, 35)
    for cx in (380, 820):
        d.ellipse([cx - 150, 480 - 150, cx + 150, 480 + 150], outline=(25, 25, 25), width=18)
        d.ellipse([cx - 128, 480 - 128, cx + 128, 480 + 128], outline=(190, 190, 195), width=2)
        for k in range(16):
            a = k * math.pi / 8
            d.line(
                [(cx, 480), (cx + 128 * math.cos(a), 480 + 128 * math.sin(a))], fill=(200, 200, 205), width=2
            )
        d.ellipse([cx - 14, 466, cx + 14, 494], fill=(90, 90, 95))
    # frame: a classic diamond
    seat, head, crank = (520, 300), (760, 290), (580, 480)
    for a, b in (
        (seat, crank),
        (crank, head),
        (seat, head),
        (crank, (380, 480)),
        (seat, (380, 480)),
        (head, (820, 480)),
    ):
        d.line([a, b], fill=red, width=16)
    # saddle, handlebar, crank and pedal
    d.rounded_rectangle([470, 262, 575, 290], radius=12, fill=(30, 30, 30))
    d.line([(760, 290), (745, 230)], fill=(60, 60, 60), width=10)
    d.line([(705, 222), (800, 232)], fill=(30, 30, 30), width=14)
    d.ellipse([550, 450, 610, 510], outline=(60, 60, 60), width=8)
    d.line([(580, 480), (630, 540)], fill=(60, 60, 60), width=8)
    d.rectangle([615, 535, 660, 550], fill=(30, 30, 30))
    # a wicker basket on the front
    d.rounded_rectangle(
        [770, 200, 880, 270], radius=10, fill=(196, 160, 100), outline=(140, 105, 60), width=4
    )
    for x in range(780, 880, 14):
        d.line([(x, 204), (x, 266)], fill=(150, 115, 70), width=2)
    return img


def kitchen_table() -> Image.Image:
    """A wooden kitchen table by a window: a bowl of oranges, a blue mug, a plate with toast."""
    img = Image.new("RGB", SIZE, (235, 228, 210))
    d = ImageDraw.Draw(img)
    # window with four panes and a pale blue sky
    d.rectangle([700, 60, 1100, 400], fill=(250, 250, 245))
    _vertical_gradient(d, (720, 80, 1080, 380), (150, 195, 235), (205, 225, 240))
    d.line([(900, 80), (900, 380)], fill=(250, 250, 245), width=14)
    d.line([(720, 230), (1080, 230)], fill=(250, 250, 245), width=14)
    # table top in perspective, with plank lines
    d.polygon([(80, 470), (1120, 470), (1200, 900), (0, 900)], fill=(160, 110, 65))
    for k in range(1, 6):
        y = 470 + k * 72
        d.line(
            [(0 + 80 * (900 - y) // 430, y), (1200 - 80 * (900 - y) // 430, y)], fill=(130, 88, 50), width=4
        )
    # white plate with two slices of toast
    d.ellipse([170, 560, 470, 700], fill=(248, 248, 248), outline=(210, 210, 210), width=4)
    for x0 in (215, 320):
        d.rounded_rectangle(
            [x0, 585, x0 + 110, 670], radius=18, fill=(215, 160, 90), outline=(170, 115, 55), width=5
        )
    # blue mug with a handle and steam
    d.rounded_rectangle([560, 470, 690, 640], radius=14, fill=(40, 85, 170))
    d.ellipse([560, 455, 690, 490], fill=(70, 45, 30), outline=(40, 85, 170), width=6)
    d.arc([670, 510, 740, 590], start=-90, end=90, fill=(40, 85, 170), width=14)
    for x in (595, 625, 655):
        d.arc([x - 15, 390, x + 15, 450], start=90, end=270, fill=(200, 200, 200), width=3)
    # glass bowl with five oranges
    d.chord([790, 520, 1070, 700], start=0, end=180, fill=(215, 230, 235), outline=(170, 190, 200), width=4)
    for cx, cy in ((840, 565), (900, 550), (960, 560), (1020, 570), (930, 505)):
        d.ellipse([cx - 40, cy - 40, cx + 40, cy + 40], fill=(245, 140, 25), outline=(205, 105, 15), width=3)
        d.ellipse([cx - 4, cy - 38, cx + 4, cy - 30], fill=(70, 110, 40))
    return img


def street_sign() -> Image.Image:
    """A street corner: a red octagonal STOP sign and a green street-name sign (ELM ST / 3RD AVE)
    on one pole, a crosswalk, under an overcast sky."""
    img = Image.new("RGB", SIZE, (200, 205, 210))
    d = ImageDraw.Draw(img)
    _vertical_gradient(d, (0, 0, SIZE[0], 560), (175, 185, 195), (215, 218, 222))
    # a row of buildings in the distance
    for k, (w, h, colour) in enumerate(
        (
            (180, 260, (150, 140, 130)),
            (220, 330, (120, 125, 135)),
            (160, 210, (165, 150, 120)),
            (240, 300, (135, 130, 125)),
            (200, 250, (145, 155, 150)),
            (220, 280, (125, 120, 118)),
        )
    ):
        x0 = sum(a for a, _b, _c in ((180, 0, 0), (220, 0, 0), (160, 0, 0), (240, 0, 0), (200, 0, 0))[:k])
        d.rectangle([x0, 560 - h, x0 + w, 560], fill=colour)
        for wy in range(560 - h + 25, 540, 45):
            for wx in range(x0 + 20, x0 + w - 30, 45):
                d.rectangle([wx, wy, wx + 22, wy + 26], fill=(215, 220, 225))
    # road and crosswalk
    d.rectangle([0, 560, SIZE[0], SIZE[1]], fill=(70, 72, 75))
    for x in range(40, SIZE[0], 130):
        d.polygon([(x, 640), (x + 70, 640), (x + 100, 860), (x + 20, 860)], fill=(235, 235, 230))
    # pole
    d.rectangle([585, 150, 615, 900], fill=(130, 135, 140))
    # street-name signs, two crossed blades
    font = _font(54)
    d.rectangle([390, 120, 810, 195], fill=(20, 110, 60), outline=(240, 240, 240), width=5)
    d.text((600, 158), "ELM ST", font=font, fill=(245, 245, 245), anchor="mm")
    d.rectangle([520, 205, 680, 265], fill=(20, 110, 60), outline=(240, 240, 240), width=5)
    d.text((600, 236), "3RD AVE", font=_font(30), fill=(245, 245, 245), anchor="mm")
    # STOP octagon
    cx, cy, r = 600, 420, 150
    points = [
        (cx + r * math.cos(math.pi / 8 + k * math.pi / 4), cy + r * math.sin(math.pi / 8 + k * math.pi / 4))
        for k in range(8)
    ]
    d.polygon(points, fill=(245, 245, 245))
    inner = [
        (
            cx + (r - 12) * math.cos(math.pi / 8 + k * math.pi / 4),
            cy + (r - 12) * math.sin(math.pi / 8 + k * math.pi / 4),
        )
        for k in range(8)
    ]
    d.polygon(inner, fill=(200, 25, 30))
    d.text((cx, cy), "STOP", font=_font(84), fill=(250, 250, 250), anchor="mm")
    return img


IMAGES = {"bicycle.jpg": bicycle, "kitchen.jpg": kitchen_table, "street-sign.jpg": street_sign}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in IMAGES.items():
        path = OUT / name
        draw().save(path, "JPEG", quality=QUALITY, optimize=True)
        print(f"{path}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
