"""bench/vision_validate_bench.py in quick mode: it runs and reports images per second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vision_validate_bench.py"


def test_quick_mode_reports_images_per_second(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--folder", str(tmp_path / "demo"),
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    results = report["results"]
    # 5 digits a class, 1 held out: 60 digits; 7 photos; 21 files in the bad folder
    assert (results["digits"]["images"], results["photos"]["images"], results["bad"]["images"]) == (60, 7, 21)
    assert results["all"]["checks"]["images_per_second"] > 0
    assert "checks + face screening" not in results["all"]  # quick mode skips screening
    assert "all        88 images: checks" in result.stdout
