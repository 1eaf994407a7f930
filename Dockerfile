# One image for every caduceus service; the command picks the service:
#   docker run IMAGE                 -> caduceus run (every service, supervised)
#   docker run IMAGE receiver        -> caduceus receiver alone (router, processor, ...)
# See docs/containers.md.
#
# The base is Debian bookworm's slim Python 3.11. PYTHON_IMAGE may name another image with
# python3 (and its venv module), groupadd and useradd, e.g. a local copy where no registry is
# reachable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: the virtualenv alone goes on, without pip's caches or the source tree.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# The same pinned versions as the tests ran with; the Kubernetes client too, so that the one
# image also serves a processor that runs modules as Jobs (docs/kubernetes.md).
RUN python3 -m venv /opt/caduceus \
    && /opt/caduceus/bin/pip install --no-compile -c constraints.txt '.[kubernetes]' \
    && /opt/caduceus/bin/python -m compileall -q /opt/caduceus/lib

FROM ${PYTHON_IMAGE}
# A fixed uid, so that the data folder on the host, and a rootless engine's socket, can be
# given to exactly this user (docs/containers.md).
ARG CADUCEUS_UID=10001
ARG CADUCEUS_GID=10001
RUN groupadd --system --gid "${CADUCEUS_GID}" caduceus \
    && useradd --system --uid "${CADUCEUS_UID}" --gid caduceus --home-dir /srv/caduceus \
        --no-create-home --shell /usr/sbin/nologin caduceus \
    && mkdir -p /srv/caduceus \
    && chown caduceus:caduceus /srv/caduceus \
    && chmod 0750 /srv/caduceus
COPY --from=build /opt/caduceus /opt/caduceus
ENV PATH=/opt/caduceus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CADUCEUS_HOME=/srv/caduceus
USER ${CADUCEUS_UID}:${CADUCEUS_GID}
WORKDIR /srv/caduceus
VOLUME ["/srv/caduceus"]
# DICOM (C-STORE, C-ECHO) and the web interface with the API.
EXPOSE 11112 8000
# Healthy when every service started in this container beat within the last 15 s
# (service_heartbeats): the same probe fits `run` and each single service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["caduceus", "health"]
ENTRYPOINT ["caduceus"]
CMD ["run"]
