#!/bin/bash
# The README's first command: install what is missing, build, and run a real
# program (python3) with smalloc preloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
py=/usr/bin/python3; [[ -x $py ]] || py=python3
echo "\$ build/smalloc-run -- $py tests/demo.py"
build/smalloc-run -- "$py" tests/demo.py
