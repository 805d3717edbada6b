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
COPY --chown=ray:users pyproject.toml README.md /tmp/peak-router/
COPY --chown=ray:users router /tmp/peak-router/router
COPY --chown=ray:users actors /tmp/peak-router/actors
COPY --chown=ray:users codecs /tmp/peak-router/codecs
COPY --chown=ray:users loadtest /tmp/peak-router/loadtest
COPY --chown=ray:users routes /tmp/peak-router/routes

# Install the project without letting pip move Ray off the version of the image, then drop the
# sources: Ray Client puts the driver's working directory on the cluster's sys.path, and the
# source folder `codecs/` there would shadow the standard library's `codecs`.
RUN pip install --no-cache-dir /tmp/peak-router "ray[default]==${RAY_VERSION}" \
 && rm -rf /tmp/peak-router \
 && router --help > /dev/null
WORKDIR /home/ray

# No ENTRYPOINT: KubeRay runs `ray start` in this image for the head and workers, and the
# chart's driver Deployment runs `router run -c /etc/router/router.yaml`.
EXPOSE 9464
