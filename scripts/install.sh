#!/usr/bin/env bash
# Installs evf-sam with its training, evaluation and test dependencies into the current Python.
# Idempotent: already-satisfied requirements are skipped. torch/torchvision are pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q torch==2.14.1 torchvision==0.29.1
$PY -m pip install -q -e ".[train,test,demo,video]"
# DeepSpeed's build imports torch, so it must see the torch installed above.
$PY -m pip show deepspeed >/dev/null 2>&1 || $PY -m pip install -q --no-build-isolation deepspeed==0.19.8
# SAM-2 (EVF-SAM2, paper Tab. 7) from Meta's `sam2` package; its setup.py imports torch too. The
# CUDA extension it can build is only used by SAM-2's video post-processing, which EVF-SAM does not run.
$PY -m pip show sam2 >/dev/null 2>&1 || SAM2_BUILD_CUDA=0 $PY -m pip install -q --no-build-isolation sam2==1.1.0
# Web-demo test (tests/test_demo.py): Debian's Chromium, driven by Playwright from Python. Never
# `playwright install` (it downloads its own browser build); the distribution's package is used.
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    else
        echo "install.sh: no apt-get here; install Chromium at /usr/bin/chromium for tests/test_demo.py" >&2
    fi
fi
