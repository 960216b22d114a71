#!/bin/sh
# Install gpujob into a venv during an image build; the Dockerfiles' RUN steps call this.
#
#   install.sh deps REQUIREMENTS VENV   the pinned dependencies (images/requirements.txt)
#   install.sh project SOURCE VENV      the project itself, without its dependencies
#
# Nothing it downloads or installs besides VENV stays in the image: uv and its cache live on
# the build's cache mount (/root/.cache), and the CA bundle it may write is deleted on exit.
# Everything installed is compiled to bytecode here, once: the image's files are read-only to
# its non-root user, so without .pyc files every process in every container would compile
# torch's Python again (6 s more before the first step on 2 cores, for each DDP worker and
# each restart; benchmarks/container_first_step.py).
set -eu
mode=$1 src=$2 venv=$3
cache=/root/.cache

# A TLS-inspecting proxy's certificate, given as the build secret `extra_ca` (a file that
# BuildKit mounts for one step only). Trust it on top of the base image's own roots.
bundle=""
trap 'rm -f "$bundle"' EXIT
if [ -s /run/secrets/extra_ca ]; then
  bundle=$(mktemp)
  { cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true; cat /run/secrets/extra_ca; } >"$bundle"
  export SSL_CERT_FILE="$bundle" PIP_CERT="$bundle"
fi

# uv installs the several-GB torch stack far faster than pip. It is one static binary, kept on
# the cache mount; `--target` works in any base (Debian's externally-managed python included).
uv=$cache/gpujob-uv/bin/uv
if ! "$uv" --version >/dev/null 2>&1; then
  rm -rf "$cache/gpujob-uv"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --cache-dir "$cache/pip" --target "$cache/gpujob-uv" uv
fi
export UV_CACHE_DIR=$cache/uv UV_LINK_MODE=copy UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never
export UV_COMPILE_BYTECODE=1

case $mode in
deps)
  # An official pytorch/pytorch base already holds torch and its CUDA libraries. When that
  # torch is the pinned version, use it instead of downloading the same stack again.
  base_torch=$(python3 -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  pinned_torch=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$src")
  list=$(mktemp)
  if [ -n "$base_torch" ] && [ "$base_torch" = "$pinned_torch" ]; then
    echo "install: the base image has torch $base_torch, the pinned version: using its torch stack"
    grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==' "$src" >"$list"
    "$uv" venv --quiet --system-site-packages --python python3 "$venv"
    # uv compiles only the venv; the base's torch stack may ship without bytecode. Already
    # compiled files are skipped; a package's deliberately invalid test files must not fail it.
    base_site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
    python3 -m compileall -q -j 0 "$base_site" >/dev/null || true
  else
    if [ -n "$base_torch" ]; then
      echo "install: the base image has torch $base_torch, the pin is $pinned_torch:" \
           "installing the pinned torch and its CUDA wheels into the venv (several GB)"
    fi
    cp "$src" "$list"
    "$uv" venv --quiet --python python3 "$venv"
  fi
  # The list is complete (every transitive dependency, pinned), so --no-deps installs exactly
  # it; --no-build refuses source builds, so no compiler is ever needed or left behind.
  "$uv" pip install --python "$venv/bin/python" --no-deps --no-build --requirement "$list"
  rm -f "$list"
  ;;
project)
  "$uv" pip install --python "$venv/bin/python" --no-deps "$src"
  ;;
*)
  echo "usage: install.sh deps|project SOURCE VENV" >&2; exit 2
  ;;
esac
