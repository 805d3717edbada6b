# The router's image: the driver (`router run`) and every Ray node of its cluster run it, so the
# actors find the same code and the same Ray and Python versions everywhere (Ray Client
# requires both to match between the driver and the cluster).
#
#   docker build -t peak-router:0.1.0 .
#
# Keep RAY_VERSION equal to the chart's `ray.version` (helm/values.yaml) and to the Ray the
# project is tested with.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}

ARG RAY_VERSION
# The base image runs as the unprivileged user `ray` and owns its Python environment.
WORKDIR /home/ray/peak-router
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users router ./router
COPY --chown=ray:users actors ./actors
COPY --chown=ray:users codecs ./codecs
COPY --chown=ray:users loadtest ./loadtest
COPY --chown=ray:users routes ./routes

# Install the project without letting pip move Ray off the version of the image.
RUN pip install --no-cache-dir . "ray[default]==${RAY_VERSION}" \
 && router --help > /dev/null

# No ENTRYPOINT: KubeRay runs `ray start` in this image for the head and workers, and the
# chart's driver Deployment runs `router run -c /etc/router/router.yaml`.
EXPOSE 9464
