# CartLoom worker image: the `cartloom` CLI on a pinned, slim Python base, running as a non-root user.
#
#   docker build -t cartloom:dev .
#   docker run --rm --env-file .env cartloom:dev worker        # the default command
#   docker run --rm --env-file .env cartloom:dev topics apply
#
# No secret is baked in: every setting (CARTLOOM_*) and the AWS credentials come from the
# environment at run time (docker-compose reads .env; Kubernetes mounts a Secret).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: resolve and install the package and its RocksDB store into a venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/cartloom
WORKDIR /src
# Metadata first so the dependency layer is cached until pyproject.toml changes.
COPY pyproject.toml constraints.txt README.md topics.yaml ./
COPY cartloom ./cartloom
# A regular (non-editable) install: the wheel carries topics.yaml inside the package.
RUN /opt/cartloom/bin/pip install -c constraints.txt ".[rocksdb]" \
    && /opt/cartloom/bin/python -c "import cartloom.cli.main, rocksdict, faust.stores.rocksdb"

# ---- runtime: the venv only, no compiler, no source tree, no pip cache ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cartloom" \
      org.opencontainers.image.description="CartLoom stream-processing worker (Faust on Kafka)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cartloom \
    && useradd --system --uid 10001 --gid cartloom --no-create-home \
       --home-dir /var/lib/cartloom --shell /usr/sbin/nologin cartloom \
    && mkdir -p /var/lib/cartloom/data \
    && chown -R 10001:10001 /var/lib/cartloom
COPY --from=build /opt/cartloom /opt/cartloom
ENV PATH=/opt/cartloom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CARTLOOM_DATA_DIR=/var/lib/cartloom/data \
    CARTLOOM_WEB_BIND=0.0.0.0 \
    CARTLOOM_WEB_PORT=6066
WORKDIR /var/lib/cartloom
# Table state (RocksDB) lives here; Kubernetes mounts the StatefulSet's volume on it.
VOLUME ["/var/lib/cartloom/data"]
USER 10001:10001
EXPOSE 6066
# Liveness of the worker's web server; reads the port from the environment at check time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request as u; p=os.environ.get('CARTLOOM_WEB_PORT','6066'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["cartloom"]
CMD ["worker"]
