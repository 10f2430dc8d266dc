"""docs/FORMAT.md's claims that other runtimes rely on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_node_example_decrypts_every_vector() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the Node.js example cannot be run here")
    proc = subprocess.run(
        [node, str(ROOT / "docs/examples/kt1_decrypt.js"), str(ROOT / "tests/vectors/kt1.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    vectors = json.loads((ROOT / "tests/vectors/kt1.json").read_text())
    built = f"{len(vectors['valid'])} vectors decrypted, {len(vectors['contexts'])} contexts built"
    assert built in proc.stdout


def test_the_docs_node_row_context_is_the_examples() -> None:
    doc = (ROOT / "docs/FORMAT.md").read_text()
    example = (ROOT / "docs/examples/kt1_decrypt.js").read_text()
    start = example.index("function rowContext(")
    assert example[start : example.index("\n}\n", start) + 2] in doc


def test_first_vector_in_the_doc_matches_the_json() -> None:
    first = json.loads((ROOT / "tests/vectors/kt1.json").read_text())["valid"][0]
    assert first["token"] in (ROOT / "docs/FORMAT.md").read_text()
