# syntax=docker/dockerfile:1
# The worker and router image: `specd worker ...` (target and draft pods) and `specd router ...`.
# Build from the repository root:
#   docker build -f docker/specd.Dockerfile -t ghcr.io/specd/specd:0.1.0 .
# PyPI's Linux torch wheel carries its CUDA runtime; the node provides the driver (through the
# NVIDIA container toolkit / device plugin that also advertises nvidia.com/gpu).
# Any image with Python 3.11+ (tomllib) and pip on PATH; `make images` passes a Debian base built
# locally with mmdebstrap (no registry pulls).
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
# Same pins as hack/install.sh: torch first, DeepSpeed built against it without prebuilt ops.
RUN pip install --upgrade pip setuptools wheel \
 && pip install "torch==2.10.0" numpy \
 && DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==0.19.8"
WORKDIR /src
COPY pyproject.toml ./
# the dependencies in a layer of their own: a source change then rebuilds, and ships to a node,
# only specd itself (torch and deepspeed above already satisfy theirs)
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY specd specd
COPY operator operator
COPY router router
COPY worker worker
COPY client client
COPY proto proto
RUN pip install --no-deps . && rm -rf /src
# The gRPC stubs are compiled on first import into $SPECD_PROTO_CACHE: compile them now, so
# pods with a read-only root file system find them.
ENV SPECD_PROTO_CACHE=/opt/specd/proto
RUN python -c "import specd.proto" && chmod -R a+rX /opt/specd
WORKDIR /
# uid 65532 has no home directory: caches of torch, Triton and DeepSpeed go under /tmp.
ENV HOME=/tmp
# A passwd entry for the uid: kopf (and torch's caches) ask getpass.getuser(), which fails without.
RUN echo 'specd:x:65532:65532:specd:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'specd:x:65532:' >> /etc/group
USER 65532:65532
ENTRYPOINT ["specd"]
