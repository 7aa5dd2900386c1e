# mnist-serve: the inference service with the shipped models baked in.
#
#   docker build -t mnist-serve .                                  # CUDA torch from PyPI (~6 GB;
#                                                                  # runs on CPU-only hosts too)
#   docker build --build-arg TORCH=cpu -t mnist-serve:cpu .        # CPU-only torch (~1 GB)
#   docker run --rm -p 8000:8000 [--gpus all] mnist-serve
#
# Settings are the MNIST_SERVE_* environment variables (app/config.py); see docs/deploy.md.
# Kept to what Docker Engine 20.10 builds: no syntax line, heredocs, COPY --link or RUN --mount.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# cuda: torch and torchvision from the default index (PyPI: the CUDA build).
# cpu:  from TORCH_CPU_INDEX_URL, PyTorch's index of CPU-only builds (no nvidia-* wheels).
ARG TORCH=cuda
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty = the versions pinned in pyproject.toml; set both to build against other releases.
ARG TORCH_VERSION=
ARG TORCHVISION_VERSION=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. Dependencies, in their own layers: they change only when pyproject.toml does. The
#    runtime dependencies are read from pyproject.toml (no dev or train extras).
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
RUN set -eu; \
    python deploy/docker/requirements.py torch "$TORCH_VERSION" "$TORCHVISION_VERSION" > torch.txt; \
    python deploy/docker/requirements.py rest > rest.txt; \
    case "$TORCH" in \
      cuda) pip install -r torch.txt ;; \
      cpu) pip install --index-url "$TORCH_CPU_INDEX_URL" -r torch.txt ;; \
      *) echo "TORCH must be cuda or cpu, not '$TORCH'" >&2; exit 2 ;; \
    esac; \
    pip install -r rest.txt; \
    pip check

# 2. The models and the source, with modes that the non-root user can read whatever the
#    checkout's were (safetensors writes its files 0600). No tests, data or dev tools come
#    in: see .dockerignore.
COPY models ./models
COPY training ./training
COPY app ./app
RUN chmod -R u=rwX,go=rX models training app

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MNIST_SERVE_HOST=0.0.0.0 \
    MNIST_SERVE_PORT=8000 \
    PYTHONPATH=/app \
    MNIST_SERVE_MODELS_DIR=/app/models

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv
# The shipped models (weights and manifests; the training plots stay out), then the source,
# imported from /app (PYTHONPATH). Editing the source rebuilds only these small layers.
COPY --from=builder /src/models /app/models
COPY --from=builder /src/training /app/training
COPY --from=builder /src/app /app/app

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Readiness (models loaded), in Python: the slim image has no curl. 503 -> HTTPError -> exit 1.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('MNIST_SERVE_PORT', '8000'), timeout=2)"]

# Exec form: python is PID 1 and gets SIGTERM itself (readiness 503, drain, exit 0).
CMD ["python", "-m", "app"]
