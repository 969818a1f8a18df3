# One pairroom node. Settings come from PAIRROOM_* environment variables (see README.md and
# docker-compose.yml); the process shuts down cleanly on SIGTERM (clients get 1012 and reconnect).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs, so the image does not depend on what else lies in the build context.
COPY pyproject.toml README.md ./
COPY pairroom ./pairroom
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --no-create-home pairroom

USER pairroom
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["pairroom", "serve", "--host", "0.0.0.0", "--port", "8000"]
