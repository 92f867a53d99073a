# Sourced by scripts/setup and scripts/test: `step NAME COMMAND...` runs one set-up step and prints
# a line when it starts and one with its time when it ends, so a first run (minutes) is not silence.
step() {
  local name=$1 started=$SECONDS
  shift
  printf '[setup] %s ...\n' "$name"
  "$@"
  printf '[setup] %s: done in %d s\n' "$name" $((SECONDS - started))
}

# pip (of $PIP_PYTHON, default the active venv's) through the shared constraints. A machine's own
# pip configuration may name local index folders that do not exist; pip then warns once per package
# looked up. Those lines are dropped, everything else pip says is shown, and pip's exit status is
# kept (the scripts set pipefail).
pip_install() {
  "${PIP_PYTHON:-python}" -m pip install -q -c scripts/constraints.txt "$@" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" || true; }
}
