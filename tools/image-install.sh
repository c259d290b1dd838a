#!/bin/sh
# Install the BioEngine Operator wheel and its pinned dependencies into one Python environment.
#
#   tools/image-install.sh PYTHON LOCKFILE WHEEL_DIR
#
# The one source of the image's install step: the Dockerfile's final stage runs it, and
# tests/test_image.py runs it into a clean virtual environment. Every dependency comes pinned
# from the lock file and as a prebuilt wheel (--only-binary): nothing is compiled, so the final
# stage needs no compiler. The package itself goes in without resolving dependencies, and
# `pip check` then fails if the lock misses or contradicts one of its requirements.
set -eu

python=$1
lock=$2
wheels=$3

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

"$python" -m pip install --no-cache-dir --only-binary=:all: --no-deps -r "$lock"
"$python" -m pip install --no-cache-dir --no-index --no-deps "$wheels"/bioengine_operator-*.whl
"$python" -m pip check
