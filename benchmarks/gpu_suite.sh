#!/usr/bin/env bash
# The GPU suite from the repository root, hf_ddm importable without installing it; arguments pass through.
cd "$(dirname "$0")/.." && PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec python3 benchmarks/gpu_suite.py "$@"
