# Stands in for nvcr.io/nvidia/tritonserver on the development node, where no registry can be
# reached: the tritonserver 2.51 that nvidia-pytriton ships (python backend only; CPU, or a
# GPU where one is present) with NumPy for the models (triton.txt: the pins of `bioengine
# up`'s Triton environment). As in NVIDIA's image, `tritonserver` is on the PATH and finds
# its backends at /opt/tritonserver/backends, so a pod's `args: [tritonserver, ...]` run it.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY triton.txt /tmp/triton.txt
# libpython3.11: the python backend's stub embeds the interpreter.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libpython3.11 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && python -m pip install --no-cache-dir --only-binary=:all: -r /tmp/triton.txt \
    && rm /tmp/triton.txt \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && server="$site/pytriton/tritonserver" \
    && mkdir -p /opt/tritonserver/backends \
    && cp -r "$server/backends/python" /opt/tritonserver/backends/python \
    && cp "$server/python_backend_stubs/3.11/triton_python_backend_stub" \
        /opt/tritonserver/backends/python/ \
    && printf '#!/bin/sh\nexport LD_LIBRARY_PATH=%s\nexec %s "$@"\n' \
        "$site/nvidia_pytriton.libs" "$server/bin/tritonserver" > /usr/local/bin/tritonserver \
    && chmod 0755 /usr/local/bin/tritonserver
USER 1000:1000
