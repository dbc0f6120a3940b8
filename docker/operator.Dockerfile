# syntax=docker/dockerfile:1
# The operator image: `specd operator` and nothing heavy (no torch, no DeepSpeed).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/specd/specd-operator:0.1.0 .
# Any image with Python 3.10+ and pip on PATH; `make images` passes a Debian base built
# locally with mmdebstrap (no registry pulls).
ARG BASE=python:3.11-slim
FROM ${BASE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY specd specd
COPY operator operator
COPY router router
COPY worker worker
COPY client client
COPY proto proto
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The distribution declares the serving plane's dependencies too; the operator needs only these.
# grpcio (+ tools, to compile the stubs below): the live-figures poller asks each router for its
# Stats over gRPC.
RUN pip install --no-cache-dir "kopf>=1.37" "lightkube>=1.0" "tenacity>=8.2" "pyyaml>=6" "pydantic>=2" \
      "grpcio>=1.62" "grpcio-tools>=1.62" "protobuf>=4.25"
# specd itself in a layer of its own: a source change leaves the dependency layer cached.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
# The gRPC stubs are compiled on first import into $SPECD_PROTO_CACHE: compile them now, for
# the read-only root file system.
ENV SPECD_PROTO_CACHE=/opt/specd/proto
RUN python -c "import specd.proto" && chmod -R a+rX /opt/specd
# A passwd entry for the uid: kopf (and torch's caches) ask getpass.getuser(), which fails without.
RUN echo 'specd:x:65532:65532:specd:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'specd:x:65532:' >> /etc/group
USER 65532:65532
ENTRYPOINT ["specd"]
CMD ["operator"]
