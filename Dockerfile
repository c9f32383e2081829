# Switchyard on Ray's own image of the Ray version it pins, for KubeRay (manifests/kuberay/).
#
#   docker build -t switchyard:ray-2.60.0 .                                         # CPU
#   docker build -t switchyard:ray-2.60.0-gpu \
#     --build-arg BASE=rayproject/ray:2.60.0-py311-gpu \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .              # CUDA
#
# The Ray version must equal the cluster's rayVersion (the generated RayService sets it from the
# installed Ray).
ARG BASE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE}

# torch first, from the index of the wanted build: an unpinned `torch` from PyPI is the CUDA one.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch --index-url ${TORCH_INDEX}

# COPY --chown creates the folder owned by ray whatever the builder (the classic builder makes a
# WORKDIR folder root's, and the build, run as ray, could not write there).
COPY --chown=ray:users pyproject.toml README.md /home/ray/switchyard/
COPY --chown=ray:users engine /home/ray/switchyard/engine
COPY --chown=ray:users deployments /home/ray/switchyard/deployments
COPY --chown=ray:users autoscaling /home/ray/switchyard/autoscaling
WORKDIR /home/ray/switchyard
RUN pip install --no-cache-dir .
