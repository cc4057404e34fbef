# syntax=docker/dockerfile:1
# The mlp platform image: controller, webhook receiver, API server, monitor runners and
# materialization jobs all run from it (`mlp` is the entrypoint).
#   docker build --build-arg EXTRAS=all --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t mlp .
# EXTRAS picks the optional dependencies: "" (core), serve, monitors, all, or a comma list.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE* ./
COPY mlp ./mlp
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ARG EXTRAS=""
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mlp" \
      org.opencontainers.image.description="GitOps for machine learning" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written under / at run time: bytecode is not cached, and the state folder and
# temporary files live on volumes, so the container runs with a read-only root filesystem.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MLP_STATE_DIR=/var/lib/mlp
COPY --from=build /dist /dist
# The wheel is the one built above (its own version); DL3013 cannot see through the variable.
# hadolint ignore=DL3013
RUN set -eu; \
    wheel="$(ls /dist/*.whl)"; \
    if [ -n "${EXTRAS}" ]; then wheel="${wheel}[${EXTRAS}]"; fi; \
    python -m pip install --no-cache-dir --no-compile "${wheel}"; \
    rm -rf /dist; \
    useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mlp; \
    mkdir -p /var/lib/mlp; \
    chown mlp /var/lib/mlp
USER 10001
VOLUME ["/var/lib/mlp", "/tmp"]
WORKDIR /var/lib/mlp
ENTRYPOINT ["mlp"]
CMD ["--help"]
