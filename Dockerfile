# syntax=docker/dockerfile:1
# Luthien: one image for `luthien proxy`, `luthien controlplane` and `luthien dashboard`.
#   docker build -t luthien:0.1.0 .
#   docker run --rm luthien:0.1.0 --help
ARG PYTHON_IMAGE=python:3.13.9-slim-bookworm

# --- builder: uv installs exactly uv.lock into /opt/venv ------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
# The same uv as scripts/setup.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3.13 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# Dependencies first (cached while only the sources change), then the project itself, as a wheel
# (--no-editable), so the runtime stage needs nothing but the venv.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable
COPY addon ./addon
COPY formats ./formats
COPY certs ./certs
COPY controlplane ./controlplane
COPY dashboard ./dashboard
COPY luthien ./luthien
RUN uv sync --frozen --no-dev --no-editable

# --- runtime --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG LUTHIEN_UID=10001
RUN groupadd --system --gid "${LUTHIEN_UID}" luthien \
    && useradd --system --uid "${LUTHIEN_UID}" --gid luthien --home-dir /home/luthien --create-home \
       --shell /usr/sbin/nologin luthien \
    && mkdir -p /var/lib/luthien/ca \
    && chown -R luthien:luthien /var/lib/luthien \
    && chmod 0750 /var/lib/luthien && chmod 0755 /var/lib/luthien/ca
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LUTHIEN_DATA_DIR=/var/lib/luthien
USER ${LUTHIEN_UID}:${LUTHIEN_UID}
WORKDIR /home/luthien
EXPOSE 8080 8081 8000
# No curl in the slim image: Python checks either LUTHIEN_HEALTHCHECK_URL (set it to
# http://127.0.0.1:8081/healthz for the control plane, :8000/healthz for the dashboard) or, by
# default, that the proxy accepts TCP connections on LUTHIEN_PORT (8080).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, socket, urllib.request; url = os.environ.get('LUTHIEN_HEALTHCHECK_URL'); urllib.request.urlopen(url, timeout=4).close() if url else socket.create_connection(('127.0.0.1', int(os.environ.get('LUTHIEN_PORT', '8080'))), timeout=4).close()"]
ENTRYPOINT ["luthien"]
CMD ["proxy", "--host", "0.0.0.0"]
