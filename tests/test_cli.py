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
