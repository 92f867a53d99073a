# Sourced by scripts/setup and scripts/test: `step NAME COMMAND...` runs one set-up step and prints
# a line when it starts and one with its time when it ends, so a first run (minutes) is not silence.
step() {
  local name=$1 started=$SECONDS
  shift
  printf '[setup] %s ...\n' "$name"
  "$@"
  printf '[setup] %s: done in %d s\n' "$name" $((SECONDS - started))
}
