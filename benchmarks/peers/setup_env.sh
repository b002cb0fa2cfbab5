#!/usr/bin/env bash
# Build the peers' virtual environment (outside the repo by default): PEERS_ENV=../bg-runs/peers-env
set -euo pipefail
cd "$(dirname "$0")"
ENV=${PEERS_ENV:-../../../bg-runs/peers-env}
[ -x "$ENV/bin/python" ] || python3 -m venv "$ENV"
"$ENV/bin/pip" install -q -r requirements.txt
echo "peers env ready: $ENV"
