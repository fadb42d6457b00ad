#!/usr/bin/env bash
# Regenerates limbo-server.json from x509-limbo's own test-case generator.
#
#   generate.sh LIMBO_CHECKOUT
#
# LIMBO_CHECKOUT is a checkout of https://github.com/C2SP/x509-limbo at the
# commit named in README.md. Needs python3 (>= 3.11) and PyPI for a
# throwaway virtualenv (cryptography ~= 46, pydantic ~= 2.13, as upstream's
# pyproject.toml asks). Keys are generated afresh on every run, so the
# certificates change while the cases (ids, constructions, expectations) stay.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$1" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet 'cryptography~=46.0' 'pydantic~=2.13'
# Upstream's `limbo compile` also loads the BetterTLS and online suites
# (public-web chains, RSA, not our profile); compile only the generated ones.
PYTHONPATH="$src" "$work/venv/bin/python" - "$work/limbo.json" <<'PY'
import sys
from limbo import testcases
from limbo.models import Limbo
cases = [make() for _, make in testcases.registry.items()]
open(sys.argv[1], "w").write(Limbo(version=1, testcases=cases).model_dump_json())
PY
python3 "$here/reduce.py" "$work/limbo.json" "$here/limbo-server.json"
