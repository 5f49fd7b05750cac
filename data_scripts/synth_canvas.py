"""Drawing helpers and value pools for the synthetic documents/UI screens: PIL only, bundled default font."""

import functools
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Big, well separated colours: "what colour is X" must be answerable from a 64 px thumbnail.
COLORS = {
    "red": (205, 45, 45),
    "green": (40, 150, 70),
    "blue": (40, 90, 200),
    "orange": (235, 140, 30),
    "purple": (130, 60, 170),
    "gray": (120, 120, 120),
}
VENDORS = [
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Ltd",
    "Stark Supply",
    "Wayne Foods",
    "Hooli",
    "Soylent Co",
    "Vandelay Imports",
    "Pied Piper",
    "Cyberdyne",
    "Tyrell Corp",
    "Oceanic Air",
    "Wonka Sweets",
]
ITEMS = [
    "Paper",
    "Stapler",
    "Printer ink",
    "Coffee",
    "Desk lamp",
    "Monitor",
    "Keyboard",
    "Mouse",
    "Cables",
    "Notebook",
    "Pens",
    "Chair",
    "Headset",
    "Webcam",
    "Folders",
    "Tape",
    "Water",
    "Sandwich",
    "Bagel",
    "Tea",
]
PEOPLE = [
    "Alice Moore",
    "Bob Chen",
    "Carla Diaz",
    "David Kim",
    "Emma Stone",
    "Farid Khan",
    "Grace Lee",
    "Hugo Weber",
    "Ines Silva",
    "Jonas Berg",
    "Kara Novak",
    "Liam Walsh",
    "Mia Rossi",
    "Noah Patel",
]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
SUBJECTS = [
    "Budget review",
    "Office move",
    "New hires",
    "Quarterly report",
    "Holiday schedule",
    "IT upgrade",
    "Safety training",
    "Client visit",
    "Parking rules",
    "Team lunch",
]


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


class Canvas:
    """An RGB page that remembers every string drawn on it (`texts`), so answers can be traced to pixels."""

    def __init__(self, width: int, height: int, background=(255, 255, 255)):
        self.img = Image.new("RGB", (width, height), background)
        self.draw = ImageDraw.Draw(self.img)
        self.background = background
        self.texts: list[str] = []

    @property
    def size(self):
        return self.img.size

    def text(self, xy, s: str, size: int = 14, fill=(25, 25, 25), anchor: str = "la") -> None:
        self.draw.text(xy, s, font=font(size), fill=fill, anchor=anchor)
        self.texts.append(s)

    def text_width(self, s: str, size: int) -> float:
        return self.draw.textlength(s, font=font(size))

    def rect(self, box, fill=None, outline=None, width=1, radius=0) -> None:
        if radius:
            self.draw.rounded_rectangle(box, radius=radius, fill=fill, outline=outline, width=width)
        else:
            self.draw.rectangle(box, fill=fill, outline=outline, width=width)

    def line(self, xy, fill=(150, 150, 150), width=1) -> None:
        self.draw.line(xy, fill=fill, width=width)

    def button(self, box, label: str, color, size: int = 15) -> None:
        self.rect(box, fill=color, radius=6)
        self.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), label, size=size, fill=(255, 255, 255), anchor="mm")

    def checkbox(self, xy, checked: bool, label: str, size: int = 14) -> None:
        x, y = xy
        self.rect((x, y, x + 14, y + 14), outline=(60, 60, 60), width=2, fill=(40, 90, 200) if checked else None)
        if checked:
            self.line([(x + 3, y + 7), (x + 6, y + 11), (x + 11, y + 3)], fill=(255, 255, 255), width=2)
        self.text((x + 22, y), label, size=size)


def finish(canvas: Canvas, rng: random.Random, rotate: bool) -> Image.Image:
    """Scan-like variation: a small rotation (documents) and mild pixel noise, both seeded."""
    img = canvas.img
    if rotate and rng.random() < 0.5:
        img = img.rotate(rng.uniform(-1.5, 1.5), resample=Image.BILINEAR, fillcolor=canvas.background)
    if rng.random() < 0.4:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 7), (img.height, img.width, 1))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    return img


def pick_color(rng: random.Random, exclude=()) -> str:
    return rng.choice([c for c in COLORS if c not in exclude])


def date_str(rng: random.Random) -> str:
    return f"{rng.randint(1, 28):02d} {rng.choice(MONTHS)} {rng.randint(2019, 2025)}"


def money(value: float) -> str:
    return f"${value:,.2f}"
