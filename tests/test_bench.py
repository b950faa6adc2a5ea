"""The benchmark's smoke run: it writes its tables (no timing is asserted; speed is not a test)."""
import json

import bench


def test_quick_stem_and_profile_parts(tmp_path):
    bench.main(["--quick", "--parts", "stem,profile", "--out", str(tmp_path)])
    stem = json.loads((tmp_path / "stem.json").read_text())
    assert len(stem) == 2 * 5  # batch sizes 1 and 8, five stems
    assert all(r["ratio_to_plain"] == 1.0 for r in stem if r["stem"] == "plain conv")
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile[0]["op"].startswith("kernel()")
    assert "aten::mm" in [r["op"] for r in profile]  # the template mix, not an einsum
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"environment", "stem", "profile"}


def test_quick_sandwich_part(tmp_path):
    bench.main(["--quick", "--parts", "sandwich", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "sandwich.json").read_text())
    assert [r["recipe"] for r in rows] == ["plain_zero, RGB", "dwg, subset sampling", "dwg, sandwich (2 reduced sets)"]
    assert all(r["ratio_to_plain"] == 1.0 for r in rows if r["recipe"] == "plain_zero, RGB")
