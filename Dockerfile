# gpujob's image: `gpujob run` with the pinned CUDA torch stack. vast.ai instances, any machine
# with Docker and NVIDIA GPUs, and `gpujob submit --backend docker` run it.
#
#   gpujob image build [--tag gpujob:latest] [--base-image IMAGE] [--extra-ca FILE] [--push]
#
# It needs BuildKit (`gpujob image build` sets DOCKER_BUILDKIT=1). No `# syntax=` line on
# purpose: that would pull a frontend image from a registry; the built-in frontend suffices.
#
# BASE_IMAGE: any image with python3 (3.11 or newer) and its venv module. The default is the
#   official Python 3.11 image on Debian bookworm, which holds no torch: the image then holds
#   exactly one torch stack, the pinned one (images/requirements.txt). Its CUDA libraries come
#   as wheels, and NVIDIA's container runtime brings the driver, so no CUDA base is needed. A
#   base whose torch is the pinned version is used as is; any other torch in a base stays
#   unused in its layers (a second stack, several GB), so pick a base without torch or with
#   the pinned one.
# extra_ca (build secret): extra CA certificates in PEM, trusted while packages download (a
#   TLS-inspecting proxy). It is mounted for those steps only and never stored in a layer.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PATH=/opt/gpujob/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# 1. The dependencies, from the same pinned list as the Modal image, compiled to bytecode. Only a
#    change to that list (or to install.sh) reruns this step; the cache mount keeps downloaded
#    wheels between builds.
RUN --mount=type=bind,source=images/requirements.txt,target=/tmp/gpujob/requirements.txt \
    --mount=type=bind,source=images/install.sh,target=/tmp/gpujob/install.sh \
    --mount=type=cache,id=gpujob-build-cache,target=/root/.cache \
    --mount=type=secret,id=extra_ca \
    sh /tmp/gpujob/install.sh deps /tmp/gpujob/requirements.txt /opt/gpujob

# 2. A non-root user, the folders jobs use, and the vast.ai on-start script. A spec's default
#    data.root (./data, relative to /workspace) is the /data volume.
RUN --mount=type=bind,source=images/vast-start.sh,target=/tmp/gpujob/vast-start.sh \
    useradd --create-home --user-group --shell /bin/bash gpujob \
 && mkdir -p /runs /data /workspace \
 && ln -s /data /workspace/data \
 && chown gpujob:gpujob /runs /data /workspace \
 && install -m 0755 /tmp/gpujob/vast-start.sh /usr/local/bin/gpujob-vast-start

# 3. The project itself, without dependencies: editing runner/ reruns only this small step.
RUN --mount=type=bind,target=/tmp/gpujob/src,rw \
    --mount=type=cache,id=gpujob-build-cache,target=/root/.cache \
    --mount=type=secret,id=extra_ca \
    sh /tmp/gpujob/src/images/install.sh project /tmp/gpujob/src /opt/gpujob

USER gpujob
WORKDIR /workspace
VOLUME ["/runs", "/data"]
ARG GPUJOB_IMAGE=gpujob:latest
ENV GPUJOB_IMAGE=${GPUJOB_IMAGE}
ENTRYPOINT ["gpujob", "run"]
CMD ["--help"]
