"""The Python API the README shows is importable from the package roots, and stays light."""

from __future__ import annotations

import subprocess
import sys


def test_package_roots_export_the_scripting_api() -> None:
    import captioning
    import indexing

    assert callable(captioning.load_captioner) and callable(indexing.open_index)
    from captioning import CaptionerOptions, load_captioner  # noqa: F401
    from indexing import open_index  # noqa: F401

    assert set(captioning.__all__) >= {"load_captioner", "CaptionerOptions", "CaptionResult"}
    assert set(indexing.__all__) >= {"open_index", "SearchHit"}


def test_reading_archives_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import captioning.archives.listing, captioning.archives.synthetic.writer\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
