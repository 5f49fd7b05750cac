"""Synthetic documents (invoice, receipt, form, table, memo). Each renderer returns (canvas, fields, candidates):
`fields` are the rendered values (None = absent), candidates are (question_type, question, answer, evidence) where
evidence is the dotted path in `fields` the answer derives from (answer None = unanswerable: that field is absent)."""

import random

from data_scripts.synth_canvas import COLORS, ITEMS, PEOPLE, SUBJECTS, VENDORS, Canvas, date_str, money, pick_color

FORM_FIELDS = {
    "Name": lambda r: r.choice(PEOPLE),
    "Phone": lambda r: f"555-{r.randint(100, 999)}-{r.randint(1000, 9999)}",
    "Email": lambda r: f"{r.choice(PEOPLE).split()[0].lower()}@{r.choice(['mail.com', 'work.org', 'inbox.net'])}",
    "City": lambda r: r.choice(["Boston", "Lyon", "Osaka", "Lagos", "Quito", "Perth", "Oslo", "Pune"]),
    "Company": lambda r: r.choice(VENDORS),
    "Start date": date_str,
    "Member ID": lambda r: f"M-{r.randint(10000, 99999)}",
    "Country": lambda r: r.choice(["Canada", "France", "Japan", "Kenya", "Chile", "India", "Norway"]),
}
TABLE_COLUMNS = {
    "Qty": lambda r: str(r.randint(1, 40)),
    "Price": lambda r: money(r.randint(100, 9999) / 100),
    "Stock": lambda r: r.choice(["In stock", "Low", "Out"]),
    "Code": lambda r: f"C{r.randint(100, 999)}",
}


def _line_items(rng, n):
    names = rng.sample(ITEMS, n)
    return [
        {"item": name, "qty": str(rng.randint(1, 9)), "price": money(rng.randint(150, 20000) / 100)} for name in names
    ]


def render_invoice(rng: random.Random):
    c = Canvas(rng.choice([384, 400, 416]), 512)
    color = pick_color(rng)
    items = _line_items(rng, rng.randint(1, 6))
    f = {
        "vendor": rng.choice(VENDORS),
        "invoice_number": f"INV-{rng.randint(1000, 99999)}",
        "date": date_str(rng),
        "due_date": date_str(rng) if rng.random() < 0.5 else None,
        "po_number": f"PO-{rng.randint(100, 9999)}" if rng.random() < 0.5 else None,
        "line_items": items,
        "header_color": color,
    }
    subtotal = sum(float(i["price"][1:].replace(",", "")) * int(i["qty"]) for i in items)
    tax = round(subtotal * 0.08, 2) if rng.random() < 0.5 else None
    f.update(subtotal=money(subtotal), tax=money(tax) if tax is not None else None, total=money(subtotal + (tax or 0)))
    x, size, hh = rng.randint(20, 36), rng.choice([13, 14, 15]), rng.randint(50, 70)
    c.rect((0, 0, c.size[0], hh), fill=COLORS[color])
    c.text((x, hh / 2), f["vendor"], size=20, fill=(255, 255, 255), anchor="lm")
    c.text((c.size[0] - x, hh / 2), "INVOICE", size=16, fill=(255, 255, 255), anchor="rm")
    y = hh + rng.randint(14, 26)
    for label, key in (
        ("Invoice No", "invoice_number"),
        ("Date", "date"),
        ("Due date", "due_date"),
        ("PO number", "po_number"),
    ):
        if f[key]:
            c.text((x, y), f"{label}: {f[key]}", size=size)
            y += size + 8
    y += 10
    cols = (x, c.size[0] - 150, c.size[0] - 90)
    for col, head in zip(cols, ("Item", "Qty", "Price")):
        c.text((col, y), head, size=size, fill=(90, 90, 90))
    y += size + 4
    c.line([(x, y), (c.size[0] - x, y)])
    y += 6
    for it in items:
        for col, key in zip(cols, ("item", "qty", "price")):
            c.text((col, y), it[key], size=size)
        y += size + 8
    c.line([(x, y), (c.size[0] - x, y)])
    y += 10
    for label, key in (("Subtotal", "subtotal"), ("Tax", "tax"), ("Total", "total")):
        if f[key]:
            c.text((cols[1] - 40, y), f"{label}: {f[key]}", size=size + (3 if key == "total" else 0))
            y += size + 10
    qa = [
        ("extraction", "What is the invoice total?", f["total"], "total"),
        ("extraction", "Who is the vendor?", f["vendor"], "vendor"),
        ("extraction", "What is the invoice number?", f["invoice_number"], "invoice_number"),
        ("counting", "How many line items are listed?", str(len(items)), "line_items"),
        ("yes_no", "Does this document show a due date?", "yes" if f["due_date"] else "no", "due_date"),
        ("yes_no", "Is tax charged?", "yes" if f["tax"] else "no", "tax"),
        ("layout", "What colour is the header bar?", color, "header_color"),
        ("unanswerable", "What is the tip amount?", None, "tip"),
    ]
    it = rng.choice(items)
    qa.append(("key_value", f"What is the quantity of {it['item']}?", it["qty"], f"line_items.{items.index(it)}.qty"))
    for q, key in (
        ("What is the due date?", "due_date"),
        ("What is the PO number?", "po_number"),
        ("What is the tax amount?", "tax"),
    ):
        qa.append(("extraction" if f[key] else "unanswerable", q, f[key], key))
    return c, f, qa


def render_receipt(rng: random.Random):
    c = Canvas(rng.choice([384, 400]), 512, background=(225, 225, 225))
    w = rng.randint(230, 280)
    left, right = (c.size[0] - w) // 2, (c.size[0] + w) // 2
    c.rect((left, 10, right, 502), fill=(255, 255, 252))
    items = _line_items(rng, rng.randint(1, 6))
    f = {
        "store": rng.choice(VENDORS),
        "date": date_str(rng),
        "time": f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}" if rng.random() < 0.5 else None,
        "line_items": items,
        "payment": rng.choice(["Card", "Cash", None]),
        "tip": money(rng.randint(100, 900) / 100) if rng.random() < 0.4 else None,
    }
    total = sum(float(i["price"][1:].replace(",", "")) for i in items) + (float(f["tip"][1:]) if f["tip"] else 0)
    f["total"] = money(total)
    mid, y, size = c.size[0] / 2, rng.randint(24, 40), rng.choice([12, 13, 14])
    c.text((mid, y), f["store"], size=18, anchor="ma")
    y += 30
    c.text((mid, y), f"{f['date']}  {f['time'] or ''}".strip(), size=size, anchor="ma")
    if f["time"]:
        c.texts += [f["date"], f["time"]]
    y += size + 16
    for it in items:
        c.text((left + 14, y), it["item"], size=size)
        c.text((right - 14, y), it["price"], size=size, anchor="ra")
        y += size + 8
    for label, key in (("Tip", "tip"), ("TOTAL", "total"), ("Paid by", "payment")):
        if f[key]:
            y += 6
            c.text((left + 14, y), label, size=size + 2)
            c.text((right - 14, y), f[key], size=size + 2, anchor="ra")
            y += size + 6
    qa = [
        ("extraction", "What is the total?", f["total"], "total"),
        ("extraction", "What is the name of the store?", f["store"], "store"),
        ("extraction", "What is the date?", f["date"], "date"),
        ("counting", "How many items were bought?", str(len(items)), "line_items"),
        ("yes_no", "Was a tip added?", "yes" if f["tip"] else "no", "tip"),
        ("unanswerable", "What is the due date?", None, "due_date"),
        ("unanswerable", "What is the invoice number?", None, "invoice_number"),
    ]
    it = rng.choice(items)
    qa.append(("key_value", f"What is the price of {it['item']}?", it["price"], f"line_items.{items.index(it)}.price"))
    for q, key in (
        ("What is the tip amount?", "tip"),
        ("At what time was the purchase made?", "time"),
        ("How was the purchase paid?", "payment"),
    ):
        qa.append(("extraction" if f[key] else "unanswerable", q, f[key], key))
    return c, f, qa


def render_form(rng: random.Random):
    c = Canvas(rng.choice([384, 416]), 512, background=rng.choice([(255, 255, 255), (250, 248, 240)]))
    labels = rng.sample(sorted(FORM_FIELDS), rng.randint(3, 6))
    color = pick_color(rng)
    f = {
        "title": rng.choice(["Registration Form", "Application Form", "Member Details", "Contact Form"]),
        "fields": {k: FORM_FIELDS[k](rng) for k in labels},
        "newsletter": rng.random() < 0.5,
        "accent_color": color,
    }
    x, y, size = rng.randint(24, 40), rng.randint(24, 40), rng.choice([13, 14, 15])
    c.text((x, y), f["title"], size=22)
    y += 34
    c.rect((x, y, c.size[0] - x, y + 5), fill=COLORS[color])
    y += 22
    for label in labels:
        c.text((x, y), label, size=size, fill=(80, 80, 80))
        c.rect((x, y + size + 4, c.size[0] - x, y + size + 30), outline=(150, 150, 150))
        c.text((x + 8, y + size + 10), f["fields"][label], size=size)
        y += size + 46
    c.checkbox((x, y), f["newsletter"], "Subscribe to newsletter", size=size)
    label = rng.choice(labels)
    absent = rng.choice([k for k in FORM_FIELDS if k not in labels] or ["Fax"])
    qa = [
        ("key_value", f"What is written in the {label} field?", f["fields"][label], f"fields.{label}"),
        ("unanswerable", f"What is written in the {absent} field?", None, f"fields.{absent}"),
        ("counting", "How many fields does the form have?", str(len(labels)), "fields"),
        ("yes_no", "Is the newsletter box checked?", "yes" if f["newsletter"] else "no", "newsletter"),
        ("extraction", "What is the title of the form?", f["title"], "title"),
        ("layout", "What colour is the line under the title?", color, "accent_color"),
    ]
    return c, f, qa


def render_table(rng: random.Random):
    c = Canvas(512, rng.choice([384, 416]))
    cols = ["Item"] + rng.sample(sorted(TABLE_COLUMNS), rng.randint(1, 3))
    names = rng.sample(ITEMS, rng.randint(2, 6))
    rows = [{"Item": n, **{k: TABLE_COLUMNS[k](rng) for k in cols[1:]}} for n in names]
    color = pick_color(rng)
    f = {
        "title": rng.choice(["Inventory", "Price list", "Stock report", "Order summary"]),
        "columns": cols,
        "rows": rows,
        "header_color": color,
    }
    x, y, size = rng.randint(20, 36), rng.randint(20, 36), rng.choice([13, 14, 15])
    c.text((x, y), f["title"], size=22)
    y += 40
    cw = (c.size[0] - 2 * x) / len(cols)
    c.rect((x, y, c.size[0] - x, y + size + 14), fill=COLORS[color])
    for j, col in enumerate(cols):
        c.text((x + j * cw + 8, y + 7), col, size=size, fill=(255, 255, 255))
    y += size + 14
    for i, row in enumerate(rows):
        c.rect((x, y, c.size[0] - x, y + size + 14), fill=(245, 245, 245) if i % 2 else None, outline=(200, 200, 200))
        for j, col in enumerate(cols):
            c.text((x + j * cw + 8, y + 7), row[col], size=size)
        y += size + 14
    i = rng.randrange(len(rows))
    col = rng.choice(cols[1:])
    missing_item = rng.choice([n for n in ITEMS if n not in names])
    qa = [
        ("key_value", f"What is the {col} of {rows[i]['Item']}?", rows[i][col], f"rows.{i}.{col}"),
        ("unanswerable", f"What is the {col} of {missing_item}?", None, f"rows.{missing_item}.{col}"),
        ("counting", "How many rows does the table have?", str(len(rows)), "rows"),
        ("extraction", "What is the title of the table?", f["title"], "title"),
        ("layout", "What colour is the table header?", color, "header_color"),
        ("extraction", "What is the first item in the table?", rows[0]["Item"], "rows.0.Item"),
    ]
    if rng.random() < 0.5:
        qa.append(("yes_no", f"Is {rows[i]['Item']} listed in the table?", "yes", f"rows.{i}.Item"))
    else:
        qa.append(("yes_no", f"Is {missing_item} listed in the table?", "no", f"rows.{missing_item}"))
    absent_col = [k for k in TABLE_COLUMNS if k not in cols]
    if absent_col:
        qa.append(
            ("unanswerable", f"What is the {absent_col[0]} of {rows[i]['Item']}?", None, f"rows.{i}.{absent_col[0]}")
        )
    return c, f, qa


def render_memo(rng: random.Random):
    c = Canvas(rng.choice([384, 400, 416]), 512, background=rng.choice([(255, 255, 255), (252, 250, 242)]))
    to, sender, cc = rng.sample(PEOPLE, 3)
    f = {
        "to": to,
        "from": sender,
        "cc": cc if rng.random() < 0.5 else None,
        "date": date_str(rng),
        "subject": rng.choice(SUBJECTS),
        "body_lines": rng.randint(3, 9),
    }
    x, y, size = rng.randint(24, 40), rng.randint(24, 40), rng.choice([13, 14, 15])
    c.text((x, y), "MEMO", size=30)
    y += 50
    for label, key in (("To", "to"), ("From", "from"), ("CC", "cc"), ("Date", "date"), ("Subject", "subject")):
        if f[key]:
            c.text((x, y), f"{label}:", size=size, fill=(90, 90, 90))
            c.text((x + 70, y), f[key], size=size)
            y += size + 10
    c.line([(x, y + 4), (c.size[0] - x, y + 4)], fill=(40, 40, 40), width=2)
    y += 20
    for _ in range(f["body_lines"]):  # body: grey bars, so the fields above are the only text to read
        c.rect((x, y, x + rng.randint(180, c.size[0] - 2 * x), y + 6), fill=(170, 170, 170))
        y += 18
    qa = [
        ("extraction", "Who is the memo from?", f["from"], "from"),
        ("extraction", "Who is the memo addressed to?", f["to"], "to"),
        ("extraction", "What is the subject?", f["subject"], "subject"),
        ("extraction", "What is the date?", f["date"], "date"),
        ("yes_no", "Is anyone copied on this memo?", "yes" if f["cc"] else "no", "cc"),
        ("extraction" if f["cc"] else "unanswerable", "Who is copied on the memo?", f["cc"], "cc"),
        ("unanswerable", "What is the invoice total?", None, "total"),
    ]
    return c, f, qa
