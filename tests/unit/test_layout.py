"""The layout's promises: recorder/ is a library that never imports mitmproxy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def recorder_modules() -> list[str]:
    out = []
    for path in sorted((REPO / "recorder").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_every_recorder_module_imports_without_mitmproxy():
    modules = recorder_modules()
    assert "recorder.store.writer" in modules and "recorder.forensics.reader" in modules
    # A fresh interpreter: this test process may have loaded mitmproxy for other tests.
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(k for k in sys.modules if k == 'mitmproxy' or k.startswith('mitmproxy.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"recorder/ loaded mitmproxy modules: {done.stdout.strip()}"


def test_flow_metadata_is_used_only_through_addons_flow_state():
    """The contract between the gateway's parts (which flow.metadata keys exist, what they hold)
    is one module: no other part reads or writes flow.metadata itself."""
    import re

    from addons import flow_state

    offenders = []
    for path in sorted((REPO / "addons").glob("*.py")):
        if path.name == "flow_state.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.metadata\b", line.split("#")[0]):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == [], "use addons/flow_state.py:\n" + "\n".join(offenders)
    assert len(set(flow_state.KEYS)) == len(flow_state.KEYS) and all(k.startswith("wiretrail.") for k in flow_state.KEYS)


def test_the_readme_layout_names_every_folder_of_recorder_and_nothing_else():
    import re

    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    named = set(re.findall(r"^  ([a-z_]+)/", block, re.M))
    folders = {p.name for p in (REPO / "recorder").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert named == folders, f"README layout: {sorted(named)}; recorder/: {sorted(folders)}"
    for path in re.findall(r"\b([a-z_]+\.(?:py|toml))\b", block):
        assert list(REPO.glob(f"**/{path}")), f"README layout names {path}, which does not exist"
