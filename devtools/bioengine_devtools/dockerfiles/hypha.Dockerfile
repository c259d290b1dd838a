# Stands in for ghcr.io/amun-ai/hypha on the development node, where no registry can be
# reached: the pinned Hypha server (hypha.txt: the pins of `bioengine up`'s Hypha
# environment), with `uvicorn` and `python -m hypha` as the chart runs them.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY hypha.txt /tmp/hypha.txt
RUN python -m pip install --no-cache-dir -r /tmp/hypha.txt && rm /tmp/hypha.txt
USER 1000:1000
