"""High-resolution synthetic pages, dashboards and phone screens whose answers are drawn in SMALL text: unreadable
once the whole image is squashed into one tower-size square, readable in the tiles of an AnyRes grid. Renderers
follow synth_docs' contract and also return the box and style each answerable value was drawn with."""

import functools
import io
import random
from dataclasses import dataclass

from data_scripts.synth_canvas import COLORS, ITEMS, PEOPLE, Canvas, date_str, font, money
from data_scripts.synth_docs import FORM_FIELDS
from data_scripts.synth_ui import APPS

LAYOUTS = {"page": (1240, 1754), "dashboard": (2400, 1080), "phone": (1080, 2400)}  # (width, height): A4 at 150 dpi
DEFAULT_TILE_SIZE = 384  # real SigLIP; the offline default's tiny tower is 128 (make_tiny_backbones.IMAGE_SIZE)
MAX_TILES = 12  # grids offered to select_best_resolution: cols * rows <= MAX_TILES
TILE_MIN_PX = 6.5  # cap height an answer keeps in a tile (6 px is about the least a glyph is legible at)
SQUASH_MAX_PX = 2.0  # cap height above which a squashed answer might still be legible
PAGE_FIELDS = {
    **FORM_FIELDS,
    "Account No": lambda r: f"{r.randint(10, 99)}-{r.randint(100000, 999999)}",
    "Reference": lambda r: f"REF-{r.randint(1000, 9999)}{r.choice('ABCDEFGHJK')}",
    "Policy No": lambda r: f"P{r.randint(1000000, 9999999)}",
    "Date of birth": date_str,
    "Tax ID": lambda r: f"{r.randint(100, 999)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
    "Department": lambda r: r.choice(["Finance", "Sales", "Legal", "Support", "Research", "Logistics"]),
    "Postcode": lambda r: f"{r.randint(10000, 99999)}",
    "Issue date": date_str,
    "Expiry date": date_str,
    "Branch": lambda r: r.choice(["North", "Harbour", "Old Town", "Airport", "Central", "Riverside"]),
    "Customer ID": lambda r: f"C-{r.randint(100000, 999999)}",
    "Amount due": lambda r: money(r.randint(1000, 500000) / 100),
}
PAGE_TITLES = ["ACCOUNT STATEMENT", "APPLICATION FORM", "CUSTOMER RECORD", "POLICY SUMMARY", "ORDER CONFIRMATION"]
KPIS = {  # no dots in keys: evidence paths are dotted
    "Active users": lambda r: f"{r.randint(1000, 99999):,}",
    "Revenue": lambda r: money(r.randint(10000, 9999999) / 100),
    "Orders": lambda r: f"{r.randint(100, 9999):,}",
    "Churn rate": lambda r: f"{r.randint(10, 99) / 10}%",
    "Avg session": lambda r: f"{r.randint(1, 19)}m {r.randint(0, 59):02d}s",
    "Open tickets": lambda r: str(r.randint(3, 400)),
    "Uptime": lambda r: f"{r.randint(9500, 9999) / 100}%",
    "Refunds": lambda r: money(r.randint(100, 99999) / 100),
}
BUTTON_LABELS = ["Export", "Refresh", "Share", "Filter", "Archive", "Approve", "Reject", "Sync now", "Download"]
BUTTON_LABELS += ["Invite", "Call", "Message", "Block", "Add note", "Pay now", "Schedule", "Print", "Compare"]
STATUSES = ["Paid", "Pending", "Shipped", "Refunded", "Cancelled", "On hold"]
GREY_KINDS = ("page",)
BUTTON_COLORS = sorted(c for c in COLORS if c != "gray")  # a button is found by colour, read by label


@dataclass(frozen=True)
class TextPlan:
    """Body-text size of one layout for one tile size, and the cap heights it gives in each view."""

    kind: str
    tile_size: int
    grid: tuple[int, int]  # (cols, rows) of tower-size tiles
    font_size: int
    cap_px: int  # height of a capital at font_size in the full-resolution image
    squashed_px: float  # cap height after resizing the whole image to tile_size x tile_size
    tiled_px: float  # cap height after the AnyRes resize to the grid (aspect kept)


@functools.cache
def cap_height(size: int) -> int:
    top, bottom = font(size).getbbox("H")[1::2]
    return bottom - top


def select_grid(width: int, height: int, tile_size: int, max_tiles: int = MAX_TILES) -> tuple[int, int]:
    """(cols, rows) LLaVA-NeXT's own rule picks among all grids of at most `max_tiles` tiles."""
    from transformers.image_processing_utils import select_best_resolution  # lazy: only the highres path pays

    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles // c + 1)]
    rows_px, cols_px = select_best_resolution((height, width), [(r * tile_size, c * tile_size) for c, r in grids])
    return cols_px // tile_size, rows_px // tile_size


def view_scales(width: int, height: int, tile_size: int, grid) -> tuple[float, float]:
    """(squash, tile): the scale a glyph's height gets in each view. A squash shrinks the two axes unequally; a
    glyph is judged by the harder-hit one (on a wide screen a letter is squeezed to a sliver before it gets short)."""
    squash = min(tile_size / width, tile_size / height)
    tile = min(grid[0] * tile_size / width, grid[1] * tile_size / height)  # AnyRes keeps the aspect ratio
    return squash, tile


@functools.cache
def text_plan(kind: str, tile_size: int = DEFAULT_TILE_SIZE, max_tiles: int = MAX_TILES) -> TextPlan:
    """The smallest body font whose capitals keep TILE_MIN_PX in a tile; refused when it is legible squashed."""
    if kind not in LAYOUTS:
        raise ValueError(f"highres kind {kind!r}: use one of {sorted(LAYOUTS)}")
    width, height = LAYOUTS[kind]
    grid = select_grid(width, height, tile_size, max_tiles)
    squash, tile = view_scales(width, height, tile_size, grid)
    size = next(s for s in range(6, 200) if cap_height(s) * tile >= TILE_MIN_PX)
    cap = cap_height(size)
    if cap * squash >= SQUASH_MAX_PX:
        raise ValueError(
            f"tile_size {tile_size}, max_tiles {max_tiles}: the {kind} ({width}x{height}) gets grid {grid}, where "
            f"{cap}-px capitals are still {cap * squash:.2f} px when squashed (need < {SQUASH_MAX_PX}); "
            "raise max_tiles so the grid has more tiles along the long side"
        )
    return TextPlan(kind, tile_size, grid, size, cap, cap * squash, cap * tile)


class Sheet:
    """A Canvas plus the box and style every answerable value was drawn with, keyed by its evidence path."""

    def __init__(self, kind: str, plan: TextPlan, background):
        self.canvas = Canvas(*LAYOUTS[kind], background=background)
        self.kind, self.plan, self.s, self.boxes = kind, plan, plan.font_size, {}

    def image(self):
        """The finished image: pages are greyscale (they have no colour to ask about, and one channel encodes and
        decodes three times faster than RGB at these sizes); screens stay RGB for their coloured buttons."""
        return self.canvas.img.convert("L") if self.kind in GREY_KINDS else self.canvas.img

    def encode(self) -> bytes:
        """PNG bytes at zlib level 1: at 2-3 megapixels level 6 costs ~20 ms more per image to encode and ~15 ms
        more to decode (measured), for files ~1.6x smaller; still deterministic."""
        buf = io.BytesIO()
        self.image().save(buf, format="PNG", optimize=False, compress_level=1)
        return buf.getvalue()

    def put(self, xy, text: str, evidence=None, fill=(25, 25, 25), background=None, size=None) -> int:
        """Draws `text` at integer (x, y), top-left anchored; records it under `evidence`; returns its right edge."""
        xy, size = (int(xy[0]), int(xy[1])), size or self.s
        self.canvas.text(xy, text, size=size, fill=fill)
        box = [int(v) for v in self.canvas.draw.textbbox(xy, text, font=font(size), anchor="la")]
        if evidence is not None:
            bg = background or self.canvas.background
            self.boxes[evidence] = {"xy": list(xy), "box": box, "size": size, "fill": list(fill), "bg": list(bg)}
        return box[2]

    def button(self, x: int, y: int, label: str, color: str, evidence: str) -> int:
        """A coloured button sized to its small label; returns its right edge."""
        pad, w = self.s, int(self.canvas.text_width(label, self.s))
        self.canvas.rect((x, y, x + w + 2 * pad, y + 2 * self.s), fill=COLORS[color])
        self.put((x + pad, y + self.s // 2), label, evidence, fill=(255, 255, 255), background=COLORS[color])
        return x + w + 2 * pad


def _buttons(rng, sheet, x, y, n):
    colors, labels = rng.sample(BUTTON_COLORS, n), rng.sample(BUTTON_LABELS, n)
    for color, label in zip(colors, labels):
        x = sheet.button(x, y, label, color, f"buttons.{color}") + sheet.s
    return dict(zip(colors, labels))


def _button_questions(rng, buttons, where):
    color = rng.choice(sorted(buttons))
    absent = rng.choice([c for c in BUTTON_COLORS if c not in buttons])
    return [
        ("extraction", f"What does the {color} button {where} say?", buttons[color], f"buttons.{color}"),
        ("unanswerable", f"What does the {absent} button {where} say?", None, f"buttons.{absent}"),
    ]


def _grey_bars(rng, sheet, x0, x1, y, y_end):
    """Body paragraphs as grey bars: a full page without more text to trace."""
    while y + sheet.s <= y_end:
        sheet.canvas.rect((x0, y, rng.randint((x0 + x1) // 2, x1), y + sheet.s // 2), fill=(200, 200, 200))
        y += int(1.6 * sheet.s)


def render_page(rng: random.Random, plan: TextPlan):
    """An A4 record: a big title (never asked), two columns of small `Label: value` fields, line items, a total."""
    sheet = Sheet("page", plan, rng.choice([(255, 255, 255), (252, 250, 244)]))
    s, (w, h), m = plan.font_size, LAYOUTS["page"], rng.randint(70, 110)
    line = int(1.8 * s)
    sheet.put((m, m), rng.choice(PAGE_TITLES), size=max(40, 4 * s))
    labels = rng.sample(sorted(PAGE_FIELDS), rng.randint(8, 14))
    f = {"fields": {k: PAGE_FIELDS[k](rng) for k in labels}, "line_items": []}
    y0 = m + max(40, 4 * s) + 2 * line
    for i, label in enumerate(labels):  # two columns, filled row by row
        x, y = (m if i % 2 == 0 else w // 2 + m // 2), y0 + (i // 2) * line
        x = sheet.put((x, y), f"{label}:", fill=(95, 95, 95)) + s // 2
        sheet.put((x, y), f["fields"][label], f"fields.{label}")
    y = y0 + (len(labels) + 1) // 2 * line + 2 * line
    cols = (m, w - m - 24 * s, w - m - 10 * s)
    for col, head in zip(cols, ("Item", "Qty", "Price")):
        sheet.put((col, y), head, fill=(95, 95, 95))
    total = 0.0
    for i, name in enumerate(rng.sample(ITEMS, rng.randint(2, 7))):
        y += line
        item = {"item": name, "qty": str(rng.randint(1, 9)), "price": money(rng.randint(150, 90000) / 100)}
        f["line_items"].append(item)
        total += int(item["qty"]) * float(item["price"][1:].replace(",", ""))
        for col, key in zip(cols, ("item", "qty", "price")):
            sheet.put((col, y), item[key], f"line_items.{i}.{key}")
    f["total"] = money(total)
    y += 2 * line
    sheet.put((sheet.put((cols[1], y), "Total:", fill=(95, 95, 95)) + s, y), f["total"], "total")
    _grey_bars(rng, sheet, m, w - m, y + 3 * line, h - m)
    label, absent = rng.choice(labels), rng.choice([k for k in sorted(PAGE_FIELDS) if k not in labels])
    i = rng.randrange(len(f["line_items"]))
    item = f["line_items"][i]
    missing = rng.choice([n for n in ITEMS if n not in {it["item"] for it in f["line_items"]}])
    qa = [
        ("key_value", f"What is the {label}?", f["fields"][label], f"fields.{label}"),
        ("unanswerable", f"What is the {absent}?", None, f"fields.{absent}"),
        ("key_value", f"What is the price of {item['item']}?", item["price"], f"line_items.{i}.price"),
        ("unanswerable", f"What is the price of {missing}?", None, f"line_items.{missing}.price"),
        ("extraction", "What is the total?", f["total"], "total"),
    ]
    return sheet, f, qa


def render_dashboard(rng: random.Random, plan: TextPlan):
    """A wide admin screen: dark sidebar, KPI cards with small values, coloured buttons, an orders table."""
    sheet = Sheet("dashboard", plan, (244, 246, 249))
    s, (w, h), c = plan.font_size, LAYOUTS["dashboard"], sheet.canvas
    app, title = rng.choice(APPS), max(28, 2 * s)  # the sidebar grows to hold the app name, never overlapping
    line, side = int(1.8 * s), max(rng.randint(260, 360), int(c.text_width(app, title)) + 2 * s)
    c.rect((0, 0, side, h), fill=(35, 40, 52))
    sheet.put((s, s), app, fill=(255, 255, 255), size=title)
    for i, nav in enumerate(["Overview", "Reports", "Customers", "Billing", "Settings"]):
        sheet.put((s, 3 * s + title + i * line), nav, fill=(200, 205, 215))
    names = rng.sample(sorted(KPIS), rng.randint(3, 5))
    f = {"kpis": {k: KPIS[k](rng) for k in names}, "orders": {}}
    x0, y = side + 2 * s, 2 * s
    card_w = (w - x0 - 2 * s) // len(names) - s
    for i, name in enumerate(names):
        x = x0 + i * (card_w + s)
        c.rect((x, y, x + card_w, y + 4 * line), fill=(255, 255, 255), outline=(215, 218, 224))
        sheet.put((x + s, y + s), name, fill=(110, 110, 110), background=(255, 255, 255))
        sheet.put((x + s, y + s + line), f["kpis"][name], f"kpis.{name}", background=(255, 255, 255))
    y += 4 * line + 2 * s
    f["buttons"] = _buttons(rng, sheet, x0, y, rng.randint(2, 4))
    y += 2 * s + 2 * line
    cols = [x0 + k * (w - x0) // 4 for k in range(4)]
    for col, head in zip(cols, ("Order", "Customer", "Status", "Amount")):
        sheet.put((col, y), head, fill=(95, 95, 95))
    n_rows = max(2, min(8, (h - y - 2 * s) // line - 1))
    for number in rng.sample(range(10000, 100000), rng.randint(2, n_rows)):  # distinct: one row per order
        y += line
        order = f"#{number}"
        row = {
            "customer": rng.choice(PEOPLE),
            "status": rng.choice(STATUSES),
            "amount": money(rng.randint(500, 99999) / 100),
        }
        f["orders"][order] = row
        for col, value, key in zip(cols, (order, *row.values()), ("", *row)):
            sheet.put((col, y), value, f"orders.{order}.{key}" if key else None)
    name, absent = rng.choice(names), rng.choice([k for k in sorted(KPIS) if k not in names])
    order = rng.choice(sorted(f["orders"]))
    qa = [
        ("key_value", f"What is the value of {name}?", f["kpis"][name], f"kpis.{name}"),
        ("unanswerable", f"What is the value of {absent}?", None, f"kpis.{absent}"),
        ("key_value", f"What is the status of order {order}?", f["orders"][order]["status"], f"orders.{order}.status"),
        ("unanswerable", f"What is the status of order #{rng.randint(100, 9999)}?", None, "orders.unlisted.status"),
        *_button_questions(rng, f["buttons"], "above the orders table"),
    ]
    return sheet, f, qa


def render_phone(rng: random.Random, plan: TextPlan):
    """A tall contacts screen: status bar, a list of names with small phone numbers, coloured action buttons."""
    sheet = Sheet("phone", plan, rng.choice([(255, 255, 255), (246, 247, 250)]))
    s, (w, h), c = plan.font_size, LAYOUTS["phone"], sheet.canvas
    m = 3 * s
    f = {"clock": f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}", "contacts": {}}
    sheet.put((m, s), f["clock"], "clock")
    sheet.put((m, 4 * s), "Contacts", size=max(40, 4 * s))
    y = 4 * s + max(40, 4 * s) + 5 * s
    line = max(int(2.4 * s), (h - y - 8 * s) // 12)  # the list spans the screen whatever the font size
    people = rng.sample(PEOPLE, rng.randint(5, min(12, (h - y - 8 * s) // line)))
    for name in people:
        number = f"+1 {rng.randint(200, 989)} {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        f["contacts"][name] = number
        sheet.put((m, y), name)
        x = w - m - int(c.text_width(number, s))
        sheet.put((x, y), number, f"contacts.{name}", fill=(90, 90, 90))
        c.line([(m, y + line - s // 2), (w - m, y + line - s // 2)], fill=(225, 225, 225))
        y += line
    f["buttons"] = _buttons(rng, sheet, m, h - 5 * s, rng.randint(2, 3))
    name, absent = rng.choice(people), rng.choice([p for p in PEOPLE if p not in people])
    qa = [
        ("key_value", f"What is the phone number of {name}?", f["contacts"][name], f"contacts.{name}"),
        ("unanswerable", f"What is the phone number of {absent}?", None, f"contacts.{absent}"),
        ("extraction", "What time does the status bar show?", f["clock"], "clock"),
        *_button_questions(rng, f["buttons"], "at the bottom"),
    ]
    return sheet, f, qa


HIGHRES_KINDS = {"page": render_page, "dashboard": render_dashboard, "phone": render_phone}


def task_of(question_type: str, evidence: str) -> str:
    """The finer task an ablation reports on: field lookup, UI element label, or abstention."""
    if question_type == "unanswerable":
        return "abstain"
    return "ui_label" if evidence.startswith("buttons.") else "field_lookup"
