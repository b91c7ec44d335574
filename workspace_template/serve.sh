#!/usr/bin/env bash
# Serve this workspace over the OpenAI-compatible API (like LMDeploy's service_docker_up.sh).
# Extra arguments pass through, e.g.: ./serve.sh --server_port 23333 --instance_num 32 --tp 1
set -euo pipefail
exec turbolm serve api_server "$(cd "$(dirname "$0")" && pwd)" "$@"
