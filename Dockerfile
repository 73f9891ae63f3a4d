# syntax=docker/dockerfile:1
#
# Identity cache sidecar. Build from the repository root (needs a Docker/BuildKit engine):
#   docker build -t identity-cache-sidecar:0.1.0 .
#
# The image writes nothing at run time: run it with a read-only root filesystem (the
# Kubernetes manifests do, with an emptyDir at /tmp). It holds no secrets: REDIS_URL,
# CACHE_KEY_SECRET, CACHE_ENCRYPTION_KEY and SIDECAR_ADMIN_TOKEN come from the pod's env.
# tests/test_dockerfile.py checks these properties on this file's text.

# One base for both stages, so /opt/venv/bin/python's symlink is valid in the runtime
# stage. Pin a digest here (python:3.11-slim-bookworm@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build

# The runtime venv gets no pip or setuptools: the builder's own pip installs into it.
RUN python -m venv --without-pip /opt/venv

# Dependencies first (their layer survives source edits): exact versions, every file's
# hash checked, wheels only (nothing compiled from an sdist in the image build).
COPY requirements.lock ./
RUN pip --python /opt/venv/bin/python install \
        --require-hashes --only-binary=:all: --no-deps --no-compile \
        -r requirements.lock

# The sidecar package itself; --no-deps: everything it needs is already pinned above.
COPY pyproject.toml ./
COPY sidecar/ ./sidecar/
RUN pip --python /opt/venv/bin/python install --no-deps --no-compile . \
    && pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        /opt/venv/lib

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="identity-cache-sidecar" \
      org.opencontainers.image.description="Caching reverse-proxy sidecar for the identity API"

# A numeric, non-root user (Kubernetes runAsNonRoot can only verify a numeric USER).
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sidecar

# Root-owned and not writable by uid 10001. The .pyc files were compiled in the builder
# with hash-based invalidation, so they stay valid whatever mtimes COPY gives the files.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY config/routes.yaml /app/config/routes.yaml

# Non-secret defaults only. In Kubernetes SIDECAR_CONFIG points at the mounted ConfigMap
# directory instead (/etc/sidecar/routes.yaml), which hot-reloads.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_CONFIG=/app/config/routes.yaml \
    SIDECAR_PORT=8080 \
    SIDECAR_ADMIN_PORT=9090

USER 10001:10001

# 8080: the proxy (the Service's target). 9090: admin (/metrics, /healthz, /readyz, purge).
EXPOSE 8080 9090

# For plain Docker only; Kubernetes ignores it and uses the probes in the manifests.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SIDECAR_ADMIN_PORT', '9090') + '/healthz', timeout=2)"]

# Exec form: python is PID 1 and gets SIGTERM itself, and drains in-flight requests for
# SIDECAR_SHUTDOWN_TIMEOUT_S before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "sidecar"]
