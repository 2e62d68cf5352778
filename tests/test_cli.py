import os
import subprocess
import sys

from typer.testing import CliRunner

from catphish import __version__
from catphish.cli import app


def _catphish(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", *args],
                          capture_output=True, text=True, check=False)


def test_help_lists_every_command_group():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("data", "site", "hub", "train", "evaluate", "report", "demo", "bench"):
        assert name in result.output


def test_version_prints_package_version():
    result = _catphish("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_known_bad_input_is_one_red_line_and_exit_2():
    result = _catphish("--device", "tpu", "data", "--help")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--device" in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = _catphish("--debug", "--device", "tpu", "data", "--help")
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_log_file_gets_the_full_log_even_when_quiet(tmp_path):
    from nifti_fixtures import write_dataset

    write_dataset(tmp_path / "data", sites={"TCGA": 2})
    log = tmp_path / "catphish.log"
    result = _catphish("--quiet", "--log-file", str(log), "data", "prepare", str(tmp_path / "data"), "--preset", "demo",
                       "--out", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert " INFO catphish: prepared 2 subjects" in text and "INFO" not in result.stderr
    unwritable = _catphish("--log-file", str(tmp_path / "missing" / "x.log"), "data", "--help")
    assert unwritable.returncode == 2 and "cannot open the log file" in unwritable.stderr


def test_data_check_prints_a_table_per_site(tmp_path):
    from nifti_fixtures import write_dataset

    write_dataset(tmp_path / "data", sites={"TCGA": 3, "UCSF": 2})
    result = subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "data", "check",
                             str(tmp_path / "data")], capture_output=True, text=True, check=False,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert {"TCGA", "UCSF"} <= set(rows)
    assert "3" in rows["TCGA"] and "2" in rows["UCSF"]
