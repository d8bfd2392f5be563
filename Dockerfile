# syntax=docker/dockerfile:1
# streamer: VPC Flow Logs -> per-ENI Prometheus metrics and reject-spike alerts.
#   docker build -t streamer .                                # the service
#   docker build --build-arg EXTRAS=demo -t streamer:demo .   # plus `streamer demo` (an embedded S3)
#   docker run -p 9108:9108 streamer demo --listen 0.0.0.0:9108
#   docker run -v ./streamer.yaml:/etc/streamer/streamer.yaml:ro -v streamer-state:/var/lib/streamer streamer

FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/streamer
COPY pyproject.toml README.md constraints.txt /src/
COPY streamer /src/streamer
RUN /opt/streamer/bin/pip install -c /src/constraints.txt "/src${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="VPC Flow Logs to per-ENI Prometheus metrics and rejected-traffic spike alerts"
RUN groupadd --system --gid 10001 streamer \
 && useradd --system --uid 10001 --gid streamer --home-dir /var/lib/streamer --shell /usr/sbin/nologin streamer \
 && mkdir -p /var/lib/streamer /etc/streamer \
 && chown streamer:streamer /var/lib/streamer
COPY --from=build /opt/streamer /opt/streamer
COPY examples/s3-poll.yaml /etc/streamer/streamer.yaml
ENV PATH=/opt/streamer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ARROW_DEFAULT_MEMORY_POOL=jemalloc
USER 10001:10001
WORKDIR /var/lib/streamer
VOLUME ["/var/lib/streamer"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAMER_HEALTH_PORT', '9108') + '/healthz', timeout=4)"]
ENTRYPOINT ["streamer"]
CMD ["run", "--config", "/etc/streamer/streamer.yaml"]
