"""Terminal output: variant labels printed literally at 80 columns; progress without '\\r' when
redirected."""

import io
import os
import subprocess
import sys
import textwrap

from rich.console import Console

from robustcompress.progress import PlainProgress, bar, format_eta

NAMES = ["base", "tensor[theta=0.9]", "tensor[theta=0.5]", "at_sap[frac=1.0]"]


def _result_rows():
    return [{"variant": v, "protocol": "paper", "attack": "pgd[steps=10]", "norm": "linf",
             "eps_label": "0.1", "run": 0, "n": 200, "clean_acc": 0.9812, "robust_acc": 0.4531,
             "fooled_any": 0.5469, "mean_norm": None} for v in NAMES]


def _render(fn, width=80) -> str:
    buf = io.StringIO()
    fn(Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def test_results_table_prints_bracketed_names_whole_at_80_columns():
    from robustcompress.commands.experiments import _print_rows

    out = _render(lambda c: _print_rows(c, _result_rows(), False, "runs/demo/results.db"))
    for name in NAMES:
        assert name in out
    assert "pgd[steps=10]" in out
    assert "0.4531" in out and "0.9812" in out  # numbers whole, not "0.4…"
    assert "…" not in out  # no cell cut to a few letters
    assert max(len(line) for line in out.splitlines()) <= 80


def test_leaderboard_prints_bracketed_names_literally():
    from robustcompress.experiments.report import print_leaderboard
    from robustcompress.experiments.report_data import ReportData

    rows = [{"variant": v, "attack": "pgd", "protocol": "paper", "eps_label": "0.1", "eps": 0.1,
             "robust_acc": 0.5, "extra": {}} for v in NAMES]
    data = ReportData("t", NAMES, rows, {})
    for width in (80, 180):
        out = _render(lambda c: print_leaderboard(data, console=c), width)
        for name in NAMES:
            assert name in out, (width, out)


def test_runner_log_lines_keep_brackets():
    from robustcompress.experiments.runner import Runner

    seen = []
    r = Runner.__new__(Runner)
    r.rank, r._log = 0, seen.append
    r.log("[eval] tensor[theta=0.9]: 3/12 units")
    assert "tensor[theta=0.9]" in _render(lambda c: c.print(seen[0]))


def test_plain_progress_lines_every_tenth_with_eta():
    buf = io.StringIO()
    p = PlainProgress(range(300), "epoch 3/10", unit="batch", stream=buf, min_interval_s=0)
    assert list(p) == list(range(300))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in buf.getvalue()
    assert lines[3].startswith("epoch 3/10: 40% (120/300 batch, ETA ")
    assert format_eta(72) == "0:01:12" and format_eta(None) == "?"


def test_bar_is_silent_when_disabled_and_plain_off_a_terminal(capsys):
    assert list(bar(range(5), "x", enabled=False)) == list(range(5))
    b = bar(range(5), "x")  # pytest's captured stderr is not a terminal
    assert isinstance(b, PlainProgress)
    assert list(b) == list(range(5))


def test_fit_with_redirected_stderr_writes_no_carriage_returns(tmp_path):
    script = textwrap.dedent("""
        import torch
        from torch import nn
        from robustcompress.data.info import Dataset, DatasetInfo, Split
        from robustcompress.training import TrainConfig, fit
        g = torch.Generator().manual_seed(0)
        x = torch.rand(400, 1, 4, 4, generator=g)
        y = (x.mean((1, 2, 3)) > 0.5).long()
        info = DatasetInfo("toy", (1, 4, 4), 2, ("a", "b"), mean=(0.5,), std=(0.3,))
        ds = Dataset(info, Split(x[:300], y[:300]), Split(x[300:], y[300:]))
        net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        fit(net, ds, TrainConfig(epochs=3, batch_size=4, optimizer="sgd", lr=0.1), progress=True)
    """)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    text = log.read_text()
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert 3 <= len(epoch_lines) <= 3 * 11  # one summary per epoch, at most ~10 progress lines each
    assert len(text.splitlines()) < 60, text
