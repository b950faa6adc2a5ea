"""The benchmark's smoke run: it writes its tables (no timing is asserted; speed is not a test)."""
import json

import bench


def test_quick_stem_and_profile_parts(tmp_path):
    assert bench.main(["--quick", "--parts", "stem,profile", "--out", str(tmp_path)]) == 0
    stem = json.loads((tmp_path / "stem.json").read_text())
    assert len(stem) == 2 * 5  # batch sizes 1 and 8, five stems
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile[0]["op"].startswith("kernel()")
    assert "aten::mm" in [r["op"] for r in profile]  # the template mix, not an einsum
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"environment", "stem", "profile"}


def test_quick_sandwich_part(tmp_path):
    assert bench.main(["--quick", "--parts", "sandwich", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sandwich.json").read_text())
    assert [r["recipe"] for r in rows] == ["plain_zero, RGB", "dwg, subset sampling", *bench.SANDWICH_RECIPES]
    # each sandwich row names the options it ran, so that tables can find a run's step cost
    assert [(r["fraction"], r["scale"], r["every"]) for r in rows[2:]] == [
        (o.get("fraction", 1), o.get("scale", 1), o.get("every", 1)) for o in bench.SANDWICH_RECIPES.values()]
    assert all(r["ms_per_step"] > 0 for r in rows)
