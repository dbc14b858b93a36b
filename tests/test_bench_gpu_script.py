"""bench/gpu.py, the one-call GPU measurement, kept from rotting: its smallest mode runs on CPU.

No GPU is needed: the script takes ``--device cpu``; the device machine runs the same code with
``cuda`` and bigger sizes (DEVELOPERS.md).
"""

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
PARTS = ["noise", "pgd-10", "pgd-40", "apgd-10", "sap", "train", "eot", "train-at"]


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_mode_prints_a_number_for_every_part_and_the_results_block(gpu, capsys, tmp_path):
    assert gpu.main(["--device", "cpu", "--smoke", "--budget-s", "300", "--out",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "SKIPPED" not in out, out
    for part in PARTS:
        line = next((ln for ln in out.splitlines() if ln.startswith(f"RESULT {part}:")), None)
        assert line is not None, f"no RESULT line for {part}:\n{out}"
        assert re.search(r"\d+\.\d+ (s|ms)\b", line), line
    block = out.split("----- bench/RESULTS.md block -----")[1].split("----- end of block -----")[0]
    assert "| figure | ours |" in block and block.count("\n| ") == len(PARTS) + 1  # + header
    assert (tmp_path / "results.md").read_text() == block.lstrip("\n")


def test_a_spent_budget_skips_parts_but_still_prints_the_block(gpu, capsys):
    assert gpu.main(["--device", "cpu", "--smoke", "--budget-s", "0"]) == 0
    out = capsys.readouterr().out
    assert all(f"SKIPPED {p}:" in out for p in PARTS)
    assert "not measured (budget spent)" in out and "----- end of block -----" in out


def test_a_failing_part_does_not_lose_the_others(gpu, capsys, monkeypatch):
    def boom(ctx):
        raise RuntimeError("simulated CUDA error")

    monkeypatch.setattr(gpu, "part_sap", boom)
    gpu.main(["--device", "cpu", "--smoke", "--skip", "pgd-10,pgd-40,apgd-10,train,train-at"])
    out = capsys.readouterr().out
    assert "FAILED sap: RuntimeError: simulated CUDA error" in out
    assert re.search(r"RESULT eot: .*\d+\.\d+ s", out)


def test_tests_part_reports_the_pytest_summary(gpu, capsys, tmp_path):
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    gpu.main(["--device", "cpu", "--smoke", "--skip", ",".join(PARTS), "--tests",
              "--pytest-args", f"-q {tmp_path / 'test_one.py'}", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"RESULT tests: .*1 passed.*\(exit 0", out), out
    assert (tmp_path / "pytest.log").exists()
