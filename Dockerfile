# WorkNet RPC, production image.
#   docker build -t worknet-rpc .
#   docker run -p 8000:8000 -e MONGODB_URI=mongodb://... -e JWT_SECRET=... -e RPC_AUTH_TOKEN=... worknet-rpc
# The image holds the production install only (requirements/base.txt, hash-checked). For a
# self-contained trial with the embedded database (GPL-2.0 SecantusDB): --build-arg EMBEDDED=1.
FROM python:3.11.14-slim-bookworm

ARG EMBEDDED=0
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="worknet-rpc" \
      org.opencontainers.image.description="WorkNet RPC: the XML-RPC business-logic server of the WorkNet freelance marketplace" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="ISC" \
      org.opencontainers.image.vendor="WorkNet" \
      org.opencontainers.image.documentation="README.md (Running in production)"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RPC_HOST=0.0.0.0 \
    RPC_PORT=8000 \
    LOG_FILE= \
    DATA_DIR=/data/db

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --system --gid 10001 worknet \
    && useradd --system --uid 10001 --gid worknet --home-dir /app --no-create-home worknet

# Dependencies first (a layer that changes only with the lock), every file checked against its hash.
COPY requirements/base.txt requirements/embedded.txt /tmp/requirements/
RUN lock=base; if [ "${EMBEDDED}" = "1" ]; then lock=embedded; fi \
    && pip install --no-cache-dir --require-hashes -r "/tmp/requirements/${lock}.txt" \
    && rm -rf /tmp/requirements

# The project itself, without dependencies, built by the locked setuptools; then the Twisted
# plugin cache, written now so that a read-only image never tries to write it at start.
COPY setup.py setup.cfg README.md /tmp/src/
COPY worknet /tmp/src/worknet
COPY twisted /tmp/src/twisted
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins as p; list(getPlugins(IPlugin, p))" \
    && twistd worknet-rpc --version

COPY deploy/healthcheck.py /usr/local/lib/worknet-rpc/healthcheck.py
RUN mkdir -p /app /data/db && chown worknet:worknet /app /data /data/db

WORKDIR /app
USER 10001:10001
EXPOSE 8000
VOLUME ["/data"]

# Follows RPC_PORT / RPC_HOST / RPC_LISTEN (it reads the daemon's own settings).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/worknet-rpc/healthcheck.py"]

STOPSIGNAL SIGTERM
CMD ["twistd", "--nodaemon", "--pidfile=", "worknet-rpc"]
