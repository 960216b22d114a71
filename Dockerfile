# gpujob's image: `gpujob run` on a CUDA-capable PyTorch base. vast.ai instances, any machine
# with Docker and NVIDIA GPUs, and `gpujob submit --backend docker` run it.
#
#   gpujob image build [--tag gpujob:latest] [--base-image IMAGE] [--extra-ca FILE] [--push]
#
# It needs BuildKit (`gpujob image build` sets DOCKER_BUILDKIT=1). No `# syntax=` line on
# purpose: that would pull a frontend image from a registry; the built-in frontend suffices.
#
# BASE_IMAGE: any image with python3 (3.11 or newer) and its venv module. The default is the
#   latest official PyTorch CUDA runtime image we could verify. When its torch is the pinned
#   version, it is used as is; otherwise the pinned torch and its CUDA wheels go into the venv
#   (several GB more), so pick the base whose torch matches images/requirements.txt.
# extra_ca (build secret): extra CA certificates in PEM, trusted while packages download (a
#   TLS-inspecting proxy). It is mounted for those steps only and never stored in a layer.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.2-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PATH=/opt/gpujob/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# 1. The dependencies, from the same pinned list as the Modal image. Only a change to that list
#    (or to install.sh) reruns this step; the cache mount keeps downloaded wheels between builds.
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
