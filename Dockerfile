# One image for the operator, the Hypha bridge and the dataset servers:
#   bioengine-operator (the entry point), bioengine-bridge and bioengine-dataserver.
# The chart runs the bridge with `command: [bioengine-bridge]`; the operator starts dataset
# servers from this same image.
#
#   docker build -t ghcr.io/bioimage-io/bioengine-operator:0.1.0 .
#
# Stage 1 builds the package's wheel (pure Python). Stage 2 installs that wheel and the exact
# dependency versions of requirements.lock, all as prebuilt wheels, with
# tools/image-install.sh, the same script tests/test_image.py runs into a clean virtual
# environment. No compiler or build tool is ever installed in the final stage.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
COPY requirements.lock tools/image-install.sh /tmp/install/
COPY --from=builder /wheels /tmp/install/wheels
RUN sh /tmp/install/image-install.sh python /tmp/install/requirements.lock /tmp/install/wheels \
    && rm -rf /tmp/install \
    && groupadd --gid 1000 bioengine \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin bioengine
USER 1000:1000
WORKDIR /tmp
# kopf's liveness endpoint (the chart sets BIOENGINE_LIVENESS=http://0.0.0.0:8080/healthz).
EXPOSE 8080
ENTRYPOINT ["bioengine-operator"]
