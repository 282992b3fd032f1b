#!/usr/bin/env bash
# Give the end-to-end tests an AWS CLI v1 of a known version in its own virtual environment,
# .venv-awscli next to .venv: awscli pins its own botocore, which must not replace the project's.
# Idempotent: does nothing when the right version is already there. Prints the path of `aws`.
set -euo pipefail

AWSCLI_VERSION="${AWSCLI_VERSION:-1.46.2}"
PYTHON="${PYTHON:-python3.11}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-awscli"
aws="$venv/bin/aws"

installed_version() {
  "$venv/bin/python" -c 'import awscli; print(awscli.__version__)' 2>/dev/null || true
}

if [ -x "$aws" ] && [ "$(installed_version)" = "$AWSCLI_VERSION" ]; then
  echo "$aws"
  exit 0
fi

# Two test sessions may get here at once: one installs, the other waits for it.
mkdir -p "$venv"
exec 9>"$venv/.install.lock"
flock 9
if [ -x "$aws" ] && [ "$(installed_version)" = "$AWSCLI_VERSION" ]; then
  echo "$aws"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "awscli==$AWSCLI_VERSION" >&2
if [ "$(installed_version)" != "$AWSCLI_VERSION" ]; then
  echo "installing awscli $AWSCLI_VERSION into $venv failed" >&2
  exit 1
fi
echo "$aws"
