#!/bin/sh
# images/requirements.txt is the project's pinned dependencies exported from uv.lock: the one
# list both images install (the Dockerfile and runner/backends/modal_app.py). After changing
# dependencies (uv add / uv lock), rerun:
#
#   sh images/export-requirements.sh            # rewrites images/requirements.txt
#   sh images/export-requirements.sh OUT        # writes OUT instead (what tests/test_modal.py compares)
set -eu
cd "$(dirname "$0")/.."
# --extra tensorboard: a job in an image (Docker, vast.ai, Modal) writes TensorBoard events as one
# here does, and they come back with its run folder.
exec uv export --frozen --no-hashes --no-dev --no-emit-project --no-header --format requirements-txt --extra tensorboard \
  --quiet -o "${1:-images/requirements.txt}"
