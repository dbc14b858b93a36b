"""The `robustcompress data` commands, run in-process through cli.main."""

import shutil

from robustcompress.cli import main


def test_data_list_info_verify(data_root, capsys):
    assert main(["data", "list", "--data-dir", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "speech_commands" in out and "fsdd-recordings.tar" in out
    assert main(["data", "info", "digits", "--train-limit", "50"]) == 0
    out = capsys.readouterr().out
    assert "(1, 8, 8)" in out and "50" in out and "360" in out
    assert main(["data", "verify", "fsdd", "--data-dir", str(data_root)]) == 0
    assert "48697dce" in capsys.readouterr().out


def test_data_verify_reports_corruption_and_user_errors(data_root, tmp_path, capsys):
    (tmp_path / "fsdd").mkdir()
    bad = tmp_path / "fsdd" / "fsdd-recordings.tar"
    shutil.copyfile(data_root / "fsdd" / "fsdd-recordings.tar", bad)
    with open(bad, "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 1]))
    assert main(["data", "verify", "fsdd", "--data-dir", str(tmp_path)]) == 1
    assert "CORRUPTED" in capsys.readouterr().out
    assert main(["data", "info", "nosuch"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["data", "download", "fsdd", "--data-dir", str(tmp_path)]) == 2
