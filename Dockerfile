# WorkNet RPC. Build: docker build -t worknet-rpc .
# Run:   docker run -p 8000:8000 -e MONGODB_URI=mongodb://... -e JWT_SECRET=... worknet-rpc
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RPC_HOST=0.0.0.0 \
    RPC_PORT=8000 \
    LOG_FILE= \
    DATA_DIR=/data/db

RUN groupadd --system --gid 10001 worknet \
    && useradd --system --uid 10001 --gid worknet --home-dir /app worknet

WORKDIR /app
COPY setup.py setup.cfg README.md ./
COPY worknet ./worknet
COPY twisted ./twisted
RUN pip install --no-cache-dir . \
    && mkdir -p /data/db && chown -R worknet:worknet /data

USER 10001:10001
EXPOSE 8000
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

STOPSIGNAL SIGTERM
CMD ["twistd", "--nodaemon", "--pidfile=", "worknet-rpc"]
