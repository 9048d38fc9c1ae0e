# The ILS image for Ray clusters (KubeRay manifests in cluster/kuberay/, cluster launcher in
# cluster/launcher/). Build from the repository root:
#   docker build -t ghcr.io/ils-project/ils:0.1.0 .
# The tag is the version in pyproject.toml; tests/test_cluster_manifests.py checks that the
# manifests name this tag and that this file installs the extras pyproject declares.
#
# GPU note: the torch==2.14.1 / torchvision==0.29.1 wheels on PyPI for linux x86_64 are CUDA
# builds that bundle the CUDA runtime (nvidia-* wheels), so a plain Python base image runs on GPU
# nodes; the host needs only the NVIDIA driver and the device plugin (nvidia.com/gpu).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    YOLO_CONFIG_DIR=/tmp/ultralytics

# Runtime libraries: OpenCV (ultralytics) needs libGL/glib; rsync/openssh for the cluster launcher.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libgl1 libglib2.0-0 libgomp1 rsync openssh-client ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# KubeRay and the launcher run Ray as this user; HOME holds ~/.ray (auth token).
RUN useradd --create-home --uid 1000 ray
WORKDIR /home/ray/ils

# Dependencies first (cached layer): the pinned lock as constraints, then the project.
COPY requirements/ requirements/
COPY pyproject.toml README.md ./
COPY ils/ ils/
COPY ilsgen/ ilsgen/
COPY rosalia/ rosalia/
COPY serve/ serve/
COPY configs/ configs/
RUN python -m pip install --upgrade "pip>=24" setuptools wheel \
    && python -m pip install -c requirements/lock.txt ".[gen,train,serve,detect]" \
    && python -m pip install --no-deps -r requirements/data.txt \
    && python -c "import ray, torch, ils.cli; print('ray', ray.__version__, 'torch', torch.__version__)"

COPY cluster/ cluster/
USER ray
ENV HOME=/home/ray
CMD ["ils", "--help"]
