"""The README's set-up (`make demo` / `make test` -> tools/setup.sh) installs into a virtual environment in the
checkout and never into the Python that ran it: run from a temporary checkout (as CI's), it must not re-point the
user's Python at that checkout. tools/setup.sh runs here against stand-ins for python3 and apt-get that log what
they are asked to do."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_BASE = """#!/usr/bin/env bash
echo "$*" >> "{log}/base.log"
if [ "$1 $2" = "-m venv" ]; then
  dir="${{@: -1}}"; mkdir -p "$dir/bin"
  printf '#!/usr/bin/env bash\\necho "$*" >> "{log}/venv.log"\\n[ "$3" = "--version" ] && echo "edgevp 0.0.0"\\nexit 0\\n' \\
    > "$dir/bin/python"
  chmod +x "$dir/bin/python"
fi
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _setup_in(tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    checkout = tmp_path / "checkout"
    (checkout / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "setup.sh", checkout / "tools" / "setup.sh")
    log, bin_ = tmp_path / "log", tmp_path / "bin"
    log.mkdir()
    bin_.mkdir()
    _script(bin_ / "fake-python3", FAKE_BASE.format(log=log))
    for tool in ("apt-get", "sudo"):  # the Debian dataset package: logged, not installed
        _script(bin_ / tool, f'#!/usr/bin/env bash\necho "{tool} $*" >> "{log}/apt.log"\n')
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(bin_ / "fake-python3")}
    env.pop("VENV", None)
    r = subprocess.run(["bash", "tools/setup.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    return r, checkout, log


def test_setup_installs_into_a_venv_in_the_checkout_and_leaves_the_users_python_alone(tmp_path):
    r, checkout, log = _setup_in(tmp_path)
    assert r.returncode == 0, r.stderr
    # the user's Python is asked for one thing only: to make the environment in the checkout
    assert (log / "base.log").read_text().splitlines() == ["-m venv --system-site-packages .venv"]
    assert (checkout / ".venv" / "bin" / "python").exists()
    installs = [line for line in (log / "venv.log").read_text().splitlines() if line.startswith("-m pip install")]
    assert any("torch==2.14.1" in line and "torchvision==0.29.1" in line for line in installs), installs
    assert any("-e .[train,dev,onnx,data,docs]" in line for line in installs), installs
    assert "activate with: source .venv/bin/activate" in r.stdout


def test_setup_reuses_an_existing_environment(tmp_path):
    first, checkout, log = _setup_in(tmp_path)
    assert first.returncode == 0, first.stderr
    (log / "base.log").unlink()
    env = {**os.environ, "PYTHON": "/nonexistent/python3"}  # the base Python is not needed a second time
    r = subprocess.run(["bash", "tools/setup.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (log / "base.log").exists()


def test_the_makefile_runs_demo_and_tests_with_the_environments_python():
    make = (ROOT / "Makefile").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}  # under `make test`
    dry = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".edgevp-installed", "test", "demo"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert dry == [".venv/bin/python -m pytest -q", ".venv/bin/python -m edgevp demo"], dry
    assert "VENV=$(VENV) bash tools/setup.sh" in make
