# mlscale as one image for every Deployment (server, stream and vision workers, monitor, gateway).
# Build: docker build -t mlscale:0.1.0 .
# Stage 1 builds a wheel and installs it with its dependencies into a virtualenv; stage 2 copies only
# that virtualenv onto a slim base and runs as an unprivileged user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/mlscale \
 && /opt/mlscale/bin/pip install --upgrade pip \
 && /opt/mlscale/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/mlscale/bin/pip install /wheels/*.whl

FROM python:3.11-slim
# libgomp: OpenMP for scikit-learn and ONNX Runtime; nothing else from the build stage is kept.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mlscale \
 && useradd --system --uid 10001 --gid mlscale --home-dir /var/lib/mlscale --create-home mlscale
COPY --from=build /opt/mlscale /opt/mlscale
ENV PATH=/opt/mlscale/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /var/lib/mlscale
USER 10001:10001
EXPOSE 8000 8001
# The Deployments pass their own command; by default the model server on every interface.
ENTRYPOINT ["mlscale"]
CMD ["serve", "--config", "/etc/mlscale/mlscale.toml", "--host", "0.0.0.0", "--port", "8000"]
