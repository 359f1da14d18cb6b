#!/bin/sh
# The README's set-up on a stock Debian/Ubuntu (PEP 668: `pip install` into the system Python is
# refused), in a clean environment: a fresh HOME, PATH=/usr/bin:/bin (the distribution's Python
# alone, no pyenv, no pip-installed tools), a fresh clone of the checkout. Run by
# tests/test_clean_setup.py when CHIMUF_SETUP_CHECK=1 (it downloads TensorFlow: minutes).
#
#   sh tests/clean_setup.sh CHECKOUT DATA_DIR WORK_DIR
#
# `sudo apt install pipx` is stood in for by pipx in a venv of the system Python (the test must
# not install system packages); everything after it is the README's lines as written.
set -eu
checkout=$1 data=$2 work=$3
rm -rf "$work" && mkdir -p "$work/home" "$work/bin"
export HOME="$work/home" PATH="/usr/bin:/bin"
unset VIRTUAL_ENV PYTHONPATH PYENV_VERSION CHIMUF_DATA CHIMUF_LOCK 2>/dev/null || true

echo "== 1. the old line is refused by the system Python (PEP 668)"
if python3 -m pip install --user nox uv >"$work/pip.log" 2>&1; then
    echo "expected pip to refuse (externally-managed-environment)"; exit 1
fi
grep -q externally-managed-environment "$work/pip.log" && echo "refused: externally-managed-environment"

echo "== 2. stand-in for: sudo apt install pipx"
python3 -m venv "$work/apt-pipx" && "$work/apt-pipx/bin/pip" install --quiet pipx
ln -s "$work/apt-pipx/bin/pipx" "$work/bin/pipx"
export PATH="$work/bin:$PATH"

echo "== 3. the README's lines"
pipx install nox
pipx install uv
pipx ensurepath
export PATH="$HOME/.local/bin:$PATH"  # what `pipx ensurepath` adds for the next terminal
git clone --quiet "$checkout" "$work/chimuf"
cd "$work/chimuf"
nox -s study -- --profile smoke --data "$data"
nox -s report
uvx nox --list >/dev/null && echo "uvx nox: ok"

echo "== 4. what came out"
run=$(cat report/.run)
test -s "$run/report/index.html" && test -s "$run/report/index.pdf" && echo "report: $run/report/index.{html,pdf}"
