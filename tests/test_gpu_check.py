"""gpu_check: skips cleanly without CUDA; its sequence of checks runs at toy sizes on the CPU."""
import json
import os

import pytest
import torch

import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real check applies")
def test_without_cuda_it_says_so_and_exits_0(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "gpu-check: no CUDA device here; nothing to check (skipped)"
    assert not os.listdir(tmp_path)


def test_cpu_smoke_runs_every_check(tmp_path):
    assert gpu_check.main(["--cpu-smoke", "--data-root", "synthetic", "--limit", "32", "--steps", "4",
                           "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    names = [r["check"] for r in rows]
    # what the CPU cannot exercise is named as skipped, never reported as passed
    skipped = [r["check"] for r in rows if r["passed"] is None]
    assert skipped == ["bf16 autocast and channels-last", "fp16 with the gradient scaler", "NCCL", "nvjpeg decoding"]
    assert names[4:8] == ["train dwg bf16 channels-last (flags accepted, ignored on CPU)",
                          "train dwg fp16 (grad scaler) (flags accepted, ignored on CPU)",
                          "train dwg compile (aot_eager backend on CPU)",
                          "train dwg decode-on-device"]
    assert "decode on the device against the workers" in names
    assert "resume dwg fp16 for one more epoch" in names and any(n.startswith("torchrun") for n in names)
    assert sum(n.startswith("images/s") for n in names) == 3
    assert all(r["passed"] for r in rows if r["passed"] is not None), rows
