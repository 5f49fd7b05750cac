"""Draw the demo's example screenshots (an invoice, a login screen, a dialog) as small PNGs in spaces_demo/examples/.

Self-contained (PIL only, no repo imports) so the Space folder stays standalone; same kinds of pages as the synthetic
generator. Deterministic: re-running rewrites identical files. Usage: python spaces_demo/make_examples.py
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
INK, MUTED, LINE, ACCENT = (20, 24, 33), (105, 112, 125), (210, 214, 222), (37, 99, 235)


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_invoice() -> Image.Image:
    image = Image.new("RGB", (480, 560), "white")
    d = ImageDraw.Draw(image)
    d.text((32, 28), "INVOICE", font=font(30), fill=INK)
    d.text((300, 34), "No. INV-20417", font=font(16), fill=MUTED)
    d.text((32, 80), "Bill to: Harbor Print Co.", font=font(15), fill=INK)
    d.text((32, 102), "Date: 2024-03-18", font=font(15), fill=INK)
    d.text((32, 124), "Due: 2024-04-17", font=font(15), fill=INK)
    y = 170
    d.line((32, y, 448, y), fill=LINE, width=2)
    for label, x in (("Item", 40), ("Qty", 270), ("Amount", 360)):
        d.text((x, y + 8), label, font=font(15), fill=MUTED)
    rows = [("Paper A4, 5 boxes", "5", "$62.50"), ("Toner cartridge", "2", "$148.00"), ("Delivery", "1", "$12.00")]
    for i, (item, qty, amount) in enumerate(rows):
        row_y = y + 44 + 36 * i
        d.text((40, row_y), item, font=font(15), fill=INK)
        d.text((270, row_y), qty, font=font(15), fill=INK)
        d.text((360, row_y), amount, font=font(15), fill=INK)
    y = y + 44 + 36 * len(rows) + 8
    d.line((32, y, 448, y), fill=LINE, width=2)
    d.text((250, y + 16), "Total due:", font=font(18), fill=INK)
    d.text((360, y + 16), "$222.50", font=font(18), fill=ACCENT)
    d.text((32, 500), "Thank you for your business.", font=font(14), fill=MUTED)
    return image


def draw_login() -> Image.Image:
    image = Image.new("RGB", (420, 520), (243, 244, 246))
    d = ImageDraw.Draw(image)
    d.rounded_rectangle((40, 50, 380, 470), radius=14, fill="white", outline=LINE, width=2)
    d.text((70, 80), "Sign in to Acme Cloud", font=font(22), fill=INK)
    for label, y in (("Email", 140), ("Password", 230)):
        d.text((70, y), label, font=font(15), fill=MUTED)
        d.rounded_rectangle((70, y + 24, 350, y + 64), radius=6, outline=LINE, width=2)
    d.text((82, 174), "jane.doe@example.com", font=font(16), fill=INK)
    for i in range(8):  # masked password dots (the default font has no bullet glyph)
        d.ellipse((84 + 14 * i, 270, 92 + 14 * i, 278), fill=INK)
    d.rectangle((70, 322, 86, 338), outline=MUTED, width=2)
    d.text((96, 320), "Remember me", font=font(15), fill=INK)
    d.rounded_rectangle((70, 362, 350, 406), radius=8, fill=ACCENT)
    d.text((178, 373), "Log in", font=font(18), fill="white")
    d.text((112, 428), "Forgot your password?", font=font(14), fill=ACCENT)
    return image


def draw_dialog() -> Image.Image:
    image = Image.new("RGB", (480, 320), (90, 96, 110))
    d = ImageDraw.Draw(image)
    d.rounded_rectangle((40, 40, 440, 280), radius=12, fill="white")
    d.text((68, 64), "Delete 3 files?", font=font(22), fill=INK)
    d.text((68, 110), "report_q1.pdf, notes.txt and logo.png will be", font=font(15), fill=MUTED)
    d.text((68, 132), "moved to the Trash. You can restore them later.", font=font(15), fill=MUTED)
    d.rounded_rectangle((200, 206, 300, 248), radius=8, outline=LINE, width=2)
    d.text((224, 216), "Cancel", font=font(16), fill=INK)
    d.rounded_rectangle((316, 206, 416, 248), radius=8, fill=(220, 38, 38))
    d.text((342, 216), "Delete", font=font(16), fill="white")
    return image


DRAWINGS = {"invoice.png": draw_invoice, "login.png": draw_login, "dialog.png": draw_dialog}
# (file name, example question), as app.py lists them; the last one is not answered by the image: a trained model says
# so, and the Space shows "Not found in the image" with the reason.
EXAMPLES = [
    ("invoice.png", "What is the total due on this invoice?"),
    ("login.png", "What is written on the blue button?"),
    ("dialog.png", "How many files will be deleted?"),
    ("invoice.png", "What is the phone number on this invoice?"),
]


def main() -> None:
    EXAMPLES_DIR.mkdir(exist_ok=True)
    for name, draw in DRAWINGS.items():
        path = EXAMPLES_DIR / name
        draw().save(path, optimize=True)
        questions = "; ".join(question for file, question in EXAMPLES if file == name)
        print(f"{path} ({path.stat().st_size // 1024} KB): {questions}")


if __name__ == "__main__":
    main()
