# The universal runtime image: control service + one embedded runtime, every weight format.
#
#   GPU host (default, CUDA base):  docker build -t modelrunner .
#   CPU host:                        docker build -t modelrunner --build-arg BASE_IMAGE=python:3.11-slim .
#   run:                             docker run --gpus all -p 50051:50051 -p 8815:8815 -v mr-cache:/cache \
#                                        -v /etc/modelrunner:/tls:ro -e MODELRUNNER_AUTH=true \
#                                        -e MODELRUNNER_TLS_CERT_FILE=/tls/cert.pem -e MODELRUNNER_TLS_KEY_FILE=/tls/key.pem \
#                                        modelrunner
#   tokens:                          docker run --rm -v mr-cache:/cache modelrunner modelrunner token create alice --role write
#
# The server listens on every interface inside the container, so it refuses to start without
# authentication and TLS (docs/security.md); -e MODELRUNNER_INSECURE=true accepts the risk on a
# network you trust. With TLS on, the health check below needs the plaintext port it probes
# replaced by a TLS one (or a probe from outside).
#
# torch comes from PyPI with its CUDA libraries, so the same install runs on both bases
# (on a CPU base it simply finds no GPU). TensorFlow is tensorflow-cpu, as pyproject declares.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/modelrunner
COPY pyproject.toml README.md ./
COPY protos protos
COPY common common
COPY entry_server entry_server
COPY runtime_flight runtime_flight
COPY client client
COPY runtime_client runtime_client
COPY cluster cluster
COPY images images
COPY serving serving
COPY app app
RUN pip install --upgrade pip && pip install ".[all]"

# Listen on every interface inside the container; keep models in a volume.
ENV MODELRUNNER_HOST=0.0.0.0 \
    MODELRUNNER_CACHE_DIR=/cache
VOLUME /cache
EXPOSE 50051 8815
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc; ch = grpc.insecure_channel('localhost:50051'); s = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service='liveness'), timeout=3); raise SystemExit(s.status != 1)"
CMD ["modelrunner", "serve"]
