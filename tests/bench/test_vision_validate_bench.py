"""bench/vision_validate_bench.py in quick mode: it runs and reports images per second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vision_validate_bench.py"


def test_quick_mode_reports_images_per_second(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--folder",
            str(tmp_path / "demo"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    results = report["results"]
    # 5 digits a class, 1 held out: 60 digits; 7 photos; 21 files in the bad folder
    assert (results["digits"]["images"], results["photos"]["images"], results["bad"]["images"]) == (
        60,
        7,
        21,
    )
    checks = results["all"]["checks"]
    # the rate is the images over the fastest repeat, and the median rate is no faster
    fastest = min(checks["seconds"])  # rounded to the millisecond
    assert (
        88 / (fastest + 0.0006) <= checks["images_per_second"] <= 88 / max(fastest - 0.0006, 1e-6)
    )
    assert checks["median_images_per_second"] <= checks["images_per_second"]
    assert "checks + face screening" not in results["all"]  # quick mode skips screening
    assert "all        88 images: checks" in result.stdout
