"""Synthetic UI screenshots (login, settings, dialog, menu, notification), same contract as synth_docs:
(canvas, fields, candidates of (question_type, question, answer, evidence))."""

import random

from data_scripts.synth_canvas import COLORS, ITEMS, VENDORS, Canvas, pick_color

APPS = ["Notely", "PixelBox", "Trackr", "CloudDesk", "Budgetly", "Chatter", "FitLog", "MapMate"]
SETTINGS = ["Wi-Fi", "Bluetooth", "Dark mode", "Notifications", "Location", "Auto update", "Sync", "Airplane mode"]
BUTTON_SETS = [
    ["Cancel", "OK"],
    ["Back", "Next"],
    ["Cancel", "Save"],
    ["Cancel", "Delete"],
    ["Close"],
    ["OK"],
    ["Later", "Update"],
    ["No", "Yes"],
    ["Cancel", "Retry", "Help"],
    ["Skip", "Apply"],
]
DIALOG_TITLES = [
    "Save changes?",
    "Delete file?",
    "Update available",
    "Connection lost",
    "Confirm order",
    "Unsaved work",
    "Sign out?",
]
LEVELS = {"info": "blue", "success": "green", "warning": "orange", "error": "red"}
NOTIFY_TITLES = {
    "info": ["New message", "Meeting soon"],
    "success": ["Upload complete", "Payment sent"],
    "warning": ["Low battery", "Storage almost full"],
    "error": ["Sync failed", "Payment declined"],
}


def _screen(rng):
    return Canvas(512, rng.choice([352, 384]), background=rng.choice([(245, 246, 248), (255, 255, 255)]))


def render_login(rng: random.Random):
    c = _screen(rng)
    color = pick_color(rng, exclude=("gray",))
    f = {
        "app": rng.choice(APPS),
        "button_label": rng.choice(["Sign in", "Log in"]),
        "button_color": color,
        "remember_me": rng.random() < 0.5,
        "error": rng.choice(["Wrong password", "Account locked", "Try again later"]) if rng.random() < 0.4 else None,
        "username": rng.choice(["alice", "bob.c", "carla_d", "dkim", "emma.s"]) if rng.random() < 0.6 else None,
    }
    w, x0 = c.size[0], rng.randint(110, 150)
    y = rng.randint(24, 44)
    c.text((w / 2, y), f["app"], size=26, anchor="ma")
    y += 50
    for label, value in (("Username", f["username"] or ""), ("Password", "********")):
        c.text((x0, y), label, size=13, fill=(90, 90, 90))
        c.rect((x0, y + 18, w - x0, y + 46), fill=(255, 255, 255), outline=(170, 170, 170), radius=4)
        if value:
            c.text((x0 + 8, y + 25), value, size=14)
        y += 60
    c.checkbox((x0, y), f["remember_me"], "Remember me", size=13)
    y += 28
    c.button((x0, y, w - x0, y + 40), f["button_label"], COLORS[color], size=16)
    if f["error"]:
        c.text((w / 2, y + 52), f["error"], size=13, fill=COLORS["red"], anchor="ma")
    qa = [
        ("layout", "What colour is the sign-in button?", color, "button_color"),
        ("yes_no", "Is Remember me checked?", "yes" if f["remember_me"] else "no", "remember_me"),
        ("extraction", "What is the name of the app?", f["app"], "app"),
        ("extraction", "What does the main button say?", f["button_label"], "button_label"),
        ("yes_no", "Is an error message shown?", "yes" if f["error"] else "no", "error"),
        ("extraction" if f["error"] else "unanswerable", "What does the error message say?", f["error"], "error"),
        ("extraction" if f["username"] else "unanswerable", "What username is entered?", f["username"], "username"),
        ("unanswerable", "What is the error code?", None, "error_code"),  # a dialog's field, never on login
    ]
    return c, f, qa


def render_settings(rng: random.Random):
    c = _screen(rng)
    names = rng.sample(SETTINGS, rng.randint(3, 6))
    f = {"settings": {n: rng.random() < 0.5 for n in names}}
    x, y, w = rng.randint(30, 60), rng.randint(16, 28), c.size[0]
    c.text((x, y), "Settings", size=24)
    y += 42
    for n in names:
        c.text((x, y + 6), n, size=15)
        on = f["settings"][n]
        c.rect((w - x - 50, y, w - x, y + 26), fill=COLORS["green"] if on else (190, 190, 190), radius=13)
        knob = w - x - 24 if on else w - x - 50
        c.draw.ellipse((knob + 2, y + 2, knob + 22, y + 24), fill=(255, 255, 255))
        c.line([(x, y + 36), (w - x, y + 36)], fill=(220, 220, 220))
        y += 44
    n = rng.choice(names)
    absent = rng.choice([s for s in SETTINGS if s not in names])
    qa = [
        ("yes_no", f"Is {n} turned on?", "yes" if f["settings"][n] else "no", f"settings.{n}"),
        ("unanswerable", f"Is {absent} turned on?", None, f"settings.{absent}"),
        ("counting", "How many settings are listed?", str(len(names)), "settings"),
        ("counting", "How many settings are turned on?", str(sum(f["settings"].values())), "settings_on"),
        ("extraction", "What is the first setting in the list?", names[0], "first_setting"),
    ]
    f.update(settings_on=[k for k, v in f["settings"].items() if v], first_setting=names[0])
    return c, f, qa


def render_dialog(rng: random.Random):
    c = Canvas(512, rng.choice([352, 384]), background=(90, 95, 105))  # dimmed app behind a modal
    buttons = rng.choice(BUTTON_SETS)
    color = pick_color(rng, exclude=("gray",))
    f = {
        "title": rng.choice(DIALOG_TITLES),
        "buttons": buttons,
        "primary_color": color,
        "bottom_right_button": buttons[-1],
        "error_code": f"E-{rng.randint(100, 999)}" if rng.random() < 0.4 else None,
    }
    w, h = c.size
    left, top = rng.randint(50, 90), rng.randint(50, 80)
    right, bottom = w - left, h - top
    c.rect((left, top, right, bottom), fill=(255, 255, 255), radius=10)
    c.text((left + 20, top + 18), f["title"], size=20)
    c.text((left + 20, top + 56), "Do you want to continue?", size=14, fill=(90, 90, 90))
    if f["error_code"]:
        c.text((left + 20, top + 80), f"Error code: {f['error_code']}", size=13, fill=(90, 90, 90))
        c.texts.append(f["error_code"])
    bx = right - 16
    for i, label in enumerate(reversed(buttons)):  # primary (last) button sits at the bottom right
        bw = max(70, c.text_width(label, 15) + 28)
        c.button((bx - bw, bottom - 52, bx, bottom - 16), label, COLORS[color] if i == 0 else COLORS["gray"])
        bx -= bw + 12
    qa = [
        ("layout", "Which button is at the bottom right?", buttons[-1], "bottom_right_button"),
        ("layout", f"What colour is the {buttons[-1]} button?", color, "primary_color"),
        ("counting", "How many buttons are in the dialog?", str(len(buttons)), "buttons"),
        ("extraction", "What is the title of the dialog?", f["title"], "title"),
        (
            "extraction" if f["error_code"] else "unanswerable",
            "What is the error code?",
            f["error_code"],
            "error_code",
        ),
        ("unanswerable", "What username is entered?", None, "username"),
    ]
    return c, f, qa


def render_menu(rng: random.Random):
    c = _screen(rng)
    items = rng.sample(ITEMS + ["Home", "Profile", "Messages", "Help", "Orders"], rng.randint(3, 6))
    sel = rng.randrange(len(items))
    color = pick_color(rng, exclude=("gray",))
    f = {
        "title": rng.choice(VENDORS),
        "items": items,
        "selected": items[sel],
        "highlight_color": color,
        "first_item": items[0],
        "last_item": items[-1],
        "version": f"{rng.randint(1, 9)}.{rng.randint(0, 20)}" if rng.random() < 0.4 else None,
    }
    x, y, w = rng.randint(30, 80), rng.randint(14, 26), c.size[0]
    c.text((x, y), f["title"], size=22)
    y += 40
    for i, item in enumerate(items):
        if i == sel:
            c.rect((x - 8, y - 6, w - x, y + 26), fill=COLORS[color], radius=6)
        c.text((x + 6, y), item, size=16, fill=(255, 255, 255) if i == sel else (30, 30, 30))
        y += 42
    if f["version"]:
        c.text((w - x, c.size[1] - 24), f"Version {f['version']}", size=12, fill=(120, 120, 120), anchor="ra")
        c.texts.append(f["version"])
    qa = [
        ("extraction", "Which item is selected?", f["selected"], "selected"),
        ("counting", "How many items are in the menu?", str(len(items)), "items"),
        ("extraction", "What is the first item in the menu?", items[0], "first_item"),
        ("extraction", "What is the last item in the menu?", items[-1], "last_item"),
        ("layout", "What colour is the highlighted item?", color, "highlight_color"),
        ("extraction" if f["version"] else "unanswerable", "What version is shown?", f["version"], "version"),
        ("unanswerable", "At what time was the notification received?", None, "time"),
    ]
    return c, f, qa


def render_notification(rng: random.Random):
    c = _screen(rng)
    level = rng.choice(sorted(LEVELS))
    f = {
        "level": level,
        "icon_color": LEVELS[level],
        "title": rng.choice(NOTIFY_TITLES[level]),
        "app": rng.choice(APPS),
        "is_error": level == "error",
        "time": f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}" if rng.random() < 0.5 else None,
        "action": rng.choice(["View", "Open", "Dismiss", "Retry"]) if rng.random() < 0.5 else None,
    }
    w, h = c.size
    left, top = rng.randint(30, 70), rng.randint(60, 120)
    right, bottom = w - left, top + 130
    c.rect((left, top, right, bottom), fill=(255, 255, 255), outline=(210, 210, 210), radius=12)
    c.draw.ellipse((left + 18, top + 22, left + 66, top + 70), fill=COLORS[f["icon_color"]])
    c.text((left + 82, top + 20), f["app"], size=13, fill=(110, 110, 110))
    c.text((left + 82, top + 42), f["title"], size=18)
    if f["time"]:
        c.text((right - 16, top + 20), f["time"], size=13, fill=(110, 110, 110), anchor="ra")
    if f["action"]:
        c.button((right - 106, bottom - 44, right - 16, bottom - 12), f["action"], COLORS["blue"], size=14)
    qa = [
        ("layout", "What colour is the notification icon?", f["icon_color"], "icon_color"),
        ("yes_no", "Is this an error notification?", "yes" if f["is_error"] else "no", "is_error"),
        ("extraction", "What is the notification title?", f["title"], "title"),
        ("extraction", "Which app sent the notification?", f["app"], "app"),
        (
            "extraction" if f["time"] else "unanswerable",
            "At what time was the notification received?",
            f["time"],
            "time",
        ),
        ("extraction" if f["action"] else "unanswerable", "What does the action button say?", f["action"], "action"),
        ("unanswerable", "What version is shown?", None, "version"),
    ]
    return c, f, qa
