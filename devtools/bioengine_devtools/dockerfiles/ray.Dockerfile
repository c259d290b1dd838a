# Stands in for rayproject/ray:<version>-py311 on the development node, where no registry can
# be reached: Debian 12's Python 3.11 with the pinned Ray Serve and what the apps in apps/
# import (ray.txt: the pins of `bioengine up`'s Ray environment), laid out as KubeRay expects
# of a Ray image: `ray` on the PATH, bash for its container command, wget for its probes, a
# user ray (uid 1000) whose home is /home/ray.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY ray.txt /tmp/ray.txt
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && python -m pip install --no-cache-dir --only-binary=:all: -r /tmp/ray.txt \
    && rm /tmp/ray.txt \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
USER 1000:100
WORKDIR /home/ray
