"""scripts/demo.sh and scripts/setup.sh on a fresh Debian: python3-venv comes before the venv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Stand-ins on PATH that log their arguments: python3 without ensurepip (as Debian ships it
# until python3-venv is installed), apt-get, and every other tool setup.sh looks for.
FAKE_PYTHON = """#!/bin/sh
echo "python3 $*" >> "$CALLS"
case "$*" in
  *"import ensurepip"*) [ -e "$CALLS.venv-installed" ] || exit 1 ;;
  "-m venv .venv")
    mkdir -p .venv/bin
    for tool in python groundstation; do
      printf '#!/bin/sh\\necho "venv-%s $*" >> "$CALLS"\\n' "$tool" > .venv/bin/$tool
      chmod +x .venv/bin/$tool
    done ;;
esac
"""
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$CALLS"
case "$*" in *python3-venv*) touch "$CALLS.venv-installed" ;; esac
"""
FAKE_ROOT = "#!/bin/sh\necho 0\n"  # `id -u`: root, as on a fresh machine's first login
FAKE_TOOL = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'
OTHER_TOOLS = ("mosquitto", "mosquitto_sub", "prometheus", "promtool", "systemd-analyze", "openssl")


@pytest.mark.parametrize("script", ["demo.sh", "setup.sh"])
def test_python3_venv_is_installed_before_the_venv_is_made(tmp_path: Path, script: str) -> None:
    """No ensurepip: apt-get update, then install python3-venv, then python3 -m venv."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / script, checkout / "scripts" / script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = [("python3", FAKE_PYTHON), ("apt-get", FAKE_APT), ("id", FAKE_ROOT)]
    for name, text in fakes + [(tool, FAKE_TOOL) for tool in OTHER_TOOLS]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    run = subprocess.run(
        ["bash", str(checkout / "scripts" / script)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = calls.read_text().splitlines()
    update = next(i for i, line in enumerate(lines) if line.startswith("apt-get update"))
    install = next(
        i for i, line in enumerate(lines) if "install" in line and "python3-venv" in line
    )
    venv = lines.index("python3 -m venv .venv")
    assert update < install < venv
