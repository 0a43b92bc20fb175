# syntax=docker/dockerfile:1
# The DEL client CLI image: `del-client` (numpy, grpcio, tokenizers; no torch). Build from the
# repository root and run it like the command:
#
#   docker build -f deploy/docker/client.Dockerfile -t del-client:0.1.0 .
#   docker run --rm del-client:0.1.0 generate "Once upon a time" --server HOST:50051 --mu 20
#
# Client bundles are cached in /home/del/.cache/del/bundles; mount a volume there to keep them.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY del_client del_client
# No extra: the client's dependencies only, so neither torch nor transformers is installed.
RUN /opt/venv/bin/pip install .

FROM ${BASE_IMAGE}
RUN useradd --system --user-group --uid 10001 --create-home --home-dir /home/del \
        --shell /usr/sbin/nologin del
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["del-client"]
CMD ["--help"]
