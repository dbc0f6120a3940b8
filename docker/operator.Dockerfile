# syntax=docker/dockerfile:1
# The operator image: `specd operator` and nothing heavy (no torch, no DeepSpeed).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/specd/specd-operator:0.1.0 .
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY specd specd
COPY operator operator
COPY router router
COPY worker worker
COPY client client
COPY proto proto
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The distribution declares the serving plane's dependencies too; the operator needs only these.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "kopf>=1.37" "kubernetes>=29" "pyyaml>=6" "pydantic>=2" \
 && pip install --no-cache-dir --no-deps /wheels/*.whl
USER 65532:65532
ENTRYPOINT ["specd"]
CMD ["operator"]
