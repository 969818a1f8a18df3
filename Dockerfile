# One pairroom node. Settings come from PAIRROOM_* environment variables (see README.md and
# docker-compose.yml); the process shuts down cleanly on SIGTERM (clients get 1012 and reconnect).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git (and ssh for ssh:// remotes) for version control: the server drives the git command line
# (docs/git.md); without it the git routes answer 503. Debian bookworm's git 2.39 with its security
# updates, as the base image's release pins it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Only what the package needs, so the image does not depend on what else lies in the build context.
COPY pyproject.toml README.md ./
COPY pairroom ./pairroom
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --no-create-home pairroom \
    && install -d -m 0700 -o pairroom -g pairroom /var/lib/pairroom/git
# Rooms' git repositories: mount a volume here so they outlive the container (docker-compose.yml).
ENV PAIRROOM_GIT_ROOT=/var/lib/pairroom/git

USER pairroom
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["pairroom", "serve", "--host", "0.0.0.0", "--port", "8000"]
