#!/usr/bin/env bash
# Give the dashboard's end-to-end test a headless Chromium and its WebDriver from Debian's packages
# (/usr/bin/chromium, /usr/bin/chromedriver), so nothing downloads a browser build of its own.
# Idempotent: does nothing when both are there. Prints the path of chromium.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

present() {
  [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]
}

if present; then
  echo "$CHROMIUM"
  exit 0
fi

# Two test sessions may get here at once: one installs, the other waits for it.
lock_dir="${XDG_RUNTIME_DIR:-/tmp}"
exec 9>"$lock_dir/backvault-ensure-chromium.lock"
flock 9
if present; then
  echo "$CHROMIUM"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "chromium and chromium-driver are missing and installing them needs root:" >&2
  echo "  apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# apt's own lock may be held by another installer for a while: wait for it rather than fail.
apt_options=(-o DPkg::Lock::Timeout=600)
if ! apt-get install -y -qq --no-install-recommends "${apt_options[@]}" chromium chromium-driver >&2; then
  apt-get update -qq "${apt_options[@]}" >&2
  apt-get install -y -qq --no-install-recommends "${apt_options[@]}" chromium chromium-driver >&2
fi
if ! present; then
  echo "installing chromium and chromium-driver did not provide $CHROMIUM and $CHROMEDRIVER" >&2
  exit 1
fi
echo "$CHROMIUM"
