# syntax=docker/dockerfile:1
# vpcflow-streamer (the `streamer` command): VPC Flow Logs -> per-ENI Prometheus metrics and reject-spike alerts.
#   docker build -t streamer .                                # the service
#   docker build --build-arg EXTRAS=demo -t streamer:demo .   # plus `streamer demo` (an embedded S3)
#   docker run -p 9108:9108 streamer demo --listen 0.0.0.0:9108
#   docker run -v ./streamer.yaml:/etc/streamer/streamer.yaml:ro -v streamer-state:/var/lib/streamer streamer

FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the native tokenizer (streamer/decode/_scan.c), in this stage only; Python's headers
# too where the base lacks them (a Debian python3 has them in python3-dev).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
    $(python -c "import os, sysconfig; print('' if os.path.exists(sysconfig.get_paths()['include'] + '/Python.h') else 'python3-dev')") \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/streamer
COPY pyproject.toml README.md constraints.txt /src/
COPY streamer /src/streamer
RUN /opt/streamer/bin/pip install -c /src/constraints.txt "/src${EXTRAS:+[$EXTRAS]}"
# Parts of the venv streamer never loads: pyarrow's Flight RPC, its own S3 filesystem (we use aiobotocore),
# its C++ headers and tests; pip and setuptools. pyarrow imports Flight and S3 only on demand.
# scripts/image-test.sh replays text and Parquet in the runtime image to show nothing needed went.
RUN cd /opt/streamer/lib/python3*/site-packages/pyarrow \
 && rm -rf include src tests _pyarrow_cpp_tests* libarrow_flight.so* libarrow_python_flight.so* _flight.*.so flight.py \
           libarrow_s3.so* _s3fs.*.so \
 && find . \( -name '*.pxd' -o -name '*.pyx' -o -name '*.pxi' \) -delete \
 && cd / && /opt/streamer/bin/python -m pip uninstall -q -y pip setuptools

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="vpcflow-streamer" \
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
