"""Text that cannot go stale: code and scripts cite only files the repository has (no notes under a temporary folder,
no document that lives elsewhere), and every `outputs/...` folder a README command reads is one that a recipe, the
smoke script or another README command writes."""

import glob
import os
import re
import subprocess

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITED_FILE = re.compile(r"[\w./-]+\.(?:md|txt|json|py|yaml)\b")
URL = re.compile(r"https?://\S+")
TEMP_NOTE = re.compile(r"(?<![\w$}])/tmp/[\w.-]+\.(?:md|txt)\b")  # a note someone kept outside the repo


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_sources_cite_no_document_missing_from_the_repo():
    files = tracked()
    for path in tracked("*.py", "*.sh", "*.yaml", "*.toml"):
        with open(os.path.join(ROOT, path)) as f:
            text = URL.sub("", f.read())
        assert not TEMP_NOTE.search(text), f"{path} cites {TEMP_NOTE.search(text).group()}, which no clone has"
        for cited in re.findall(r"[\w./-]+\.md\b", text):
            if os.path.basename(cited) == "README.md":  # every model folder, Space and checkpoint has its own
                continue
            assert any(f == cited or f.endswith("/" + cited) for f in files), f"{path} cites {cited}, not in the repo"


def written_folders(readme: str) -> set[str]:
    """Folders the project writes: recipes' output_dir (the smoke recipes' OUT_DIR is the smoke default), and the
    --output_dir / --out of README commands."""
    folders = {"outputs/offline"}
    for path in glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True):
        with open(path) as f:
            output_dir = (yaml.safe_load(f) or {}).get("output_dir")
        if output_dir and not output_dir.startswith("OUT_DIR"):
            folders.add(output_dir)
    folders |= set(re.findall(r"--(?:output_dir|out)[\s=]+(outputs/[\w./-]+)", readme))
    return folders


def test_readme_commands_read_only_folders_something_writes():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    written = written_folders(readme)
    assert "outputs/stage2-qwen2.5-1.5b" in written  # the check has something to check against
    for folder in sorted(set(re.findall(r"outputs/[\w.-]+(?:/[\w.-]+)*", readme))):
        assert any(folder == w or folder.startswith(w + "/") for w in written), (
            f"README reads {folder}, which no recipe, smoke.sh or README command writes"
        )
