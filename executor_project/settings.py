"""Executor settings, read from the environment (see .env.example for every variable).

Without DATABASE_URL the executor is in quick-start mode (`make run` on a laptop): SQLite and an embedded Redis
under .devdata/, DEBUG on, a throw-away SECRET_KEY. With DATABASE_URL set (production, CI) SECRET_KEY is
required and DEBUG is off unless asked for; docker-compose.yml sets all of it.
"""

from importlib.util import find_spec
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import quick_start
from .env import (
    env_bool,
    env_database,
    env_int,
    env_list,
    env_rate,
    env_redis_url,
    env_str,
    quick_start_fernet_key,
    redis_py_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# The quick start's SQLite database, fernet.key and Redis socket; manage.py refuses commands when it holds no
# database (quick_start.py), so a command with the wrong EXECUTOR_DATA_DIR does not make a second, empty one.
DATA_DIR = quick_start.data_dir()

QUICK_START = quick_start.enabled()
DEBUG = env_bool("DEBUG", QUICK_START)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not QUICK_START:
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is (only the quick start has a default)")
    SECRET_KEY = "insecure-quick-start-key-do-not-use-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# --- HTTPS and security headers (`manage.py check --deploy` is clean with the production .env.example) --------
# Behind a proxy that terminates TLS (EXECUTOR_HTTPS=true): trust its X-Forwarded-Proto, which the proxy must set
# and overwrite; cookies over HTTPS only; plain-HTTP requests redirected to https; HSTS. The quick start and
# plain-HTTP development leave it off.
EXECUTOR_HTTPS = env_bool("EXECUTOR_HTTPS", False)
if EXECUTOR_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    # docker-compose's health check calls http://127.0.0.1:8000/readyz inside the container, past the proxy:
    # redirected to https it would fail; so would a Prometheus scraping /metrics on the internal network. Patterns
    # match the path without its leading slash (urls.py: "healthz").
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # HSTS for a year by default (0 turns it off, and check --deploy then says so).
    SECURE_HSTS_SECONDS = env_int("EXECUTOR_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
    # Opt-in: includeSubDomains binds every host under this one to HTTPS for the HSTS lifetime, and preload asks
    # browsers to ship that in their lists (only meaningful on a registrable domain, and slow to undo). Neither is
    # the executor's to decide for hosts it does not run, so both stay off unless the operator turns them on.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("EXECUTOR_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("EXECUTOR_HSTS_PRELOAD", False)
    # Django's deploy check warns about exactly these two when they are off (W005, W021): a deliberate default.
    _HSTS_OPT_INS = {"security.W005": SECURE_HSTS_INCLUDE_SUBDOMAINS, "security.W021": SECURE_HSTS_PRELOAD}
    SILENCED_SYSTEM_CHECKS = [check for check, on in _HSTS_OPT_INS.items() if SECURE_HSTS_SECONDS and not on]
# Headers for every response (Django's defaults, written down): no framing, no MIME sniffing, the referrer only
# to this site, a browsing context of its own.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "packages",
    "executions",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Next, so it sees every later middleware's errors: JSON for the API, 503 for an unreachable dependency.
    "executor_project.errors.ErrorResponsesMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CSRF, which reads every form's body: refuses oversized or malformed bodies first (uploads.py).
    "executor_project.uploads.RequestLimitsMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "executor_project.urls"
WSGI_APPLICATION = "executor_project.wsgi.application"

# django-ninja's Swagger UI files serve the API docs offline (executor_project/api.py) without ninja being an installed
# app: an installed app is imported by every process, and ninja would load pydantic into each worker (~11 MiB).
NINJA_DIR = Path(find_spec("ninja").origin).parent

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "executor_project" / "templates", NINJA_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "executor_project.context_processors.sandbox_warning",
            ],
        },
    },
]

# Database connections. Each process keeps one per thread for CONN_MAX_AGE (60 s) and checks it before reusing it
# (CONN_HEALTH_CHECKS): a connection that a database restart broke is replaced, not answered with an error.
# The budget, which must stay under PostgreSQL's max_connections (100 by default, 3 of them reserved):
#   web     gunicorn workers (WEB_CONCURRENCY, 3) x threads (1: sync workers)                      3
#   worker  per worker: its slots (--concurrency, 2) + 1 heartbeat thread                   3 each
#   beat    1                                                                                      1
#   plus manage.py commands and a few for the operator's psql
# `make run` needs 7; docker-compose with `--scale worker=3` 13. Never a threaded server with persistent
# connections: the development server keeps one per request thread and ran PostgreSQL out of connections
# (`too many clients`) in a burst of 100 events/s (issue 15).
DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{quick_start.database_path()}")}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database host that is down without refusing connections would hold a request until gunicorn kills its
    # worker (60 s); after 5 s it is an error, answered 503 (executor_project/errors.py).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The quick start shares one SQLite file between web, worker and beat: WAL lets readers proceed while a
    # writer works, IMMEDIATE transactions take the write lock up front instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [NINJA_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Uploads (executor_project/uploads.py): one script file may not exceed this.
EXECUTOR_MAX_SCRIPT_BYTES = env_int("EXECUTOR_MAX_SCRIPT_BYTES", 5 * 1024 * 1024, minimum=1024)
# Run-form uploads and secrets.json files: a larger one is refused before it is read (checked on Content-Length,
# then again while the body streams in).
EXECUTOR_MAX_UPLOAD_BYTES = env_int("EXECUTOR_MAX_UPLOAD_BYTES", 10 * 1024 * 1024, minimum=1024)
# A package form that fails validation keeps the script files chosen in it (packages/staged_uploads.py) for
# this long, so a resubmit within it saves them without choosing them again; the reaper deletes older ones.
EXECUTOR_STAGED_UPLOAD_HOURS = env_int("EXECUTOR_STAGED_UPLOAD_HOURS", 24, minimum=1)
# Form fields other than files, and request bodies read whole (the webhook's).
DATA_UPLOAD_MAX_MEMORY_SIZE = EXECUTOR_MAX_SCRIPT_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = EXECUTOR_MAX_SCRIPT_BYTES
# LimitedUploadHandler first: it stops a file that grows past the larger of the two limits above.
FILE_UPLOAD_HANDLERS = [
    "executor_project.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# LOG_FORMAT=json: one JSON object per line (executor_project/log_format.py), with the execution's id, package,
# project and correlation id on every state change (executions/state_log.py), for a log pipeline to join with the
# admin; plain (the default): text for people.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "executor_project.log_format.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Metrics (executor_project/metrics.py, served at /metrics) ---------------------------------------------------
# Every process writes its metrics into this directory and /metrics adds them up (prometheus_client's multi-process
# mode): web, worker and beat must share it (`make run` uses <data dir>/metrics and empties it at start; the image
# sets /tmp/executor-metrics). Empty: each process's metrics are its own (only the web's own reach /metrics).
EXECUTOR_METRICS_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "metrics"))
# Set: /metrics requires `Authorization: Bearer <token>` (401 otherwise). Unset: open, like /healthz (keep it off
# the public network then).
EXECUTOR_METRICS_TOKEN = env_str("EXECUTOR_METRICS_TOKEN", "")
# Queue depths and the counts of pending and running executions are read at most this often per web process
# (an LLEN per lane, one indexed COUNT), however often /metrics is scraped.
EXECUTOR_METRICS_SAMPLE_SECONDS = env_int("EXECUTOR_METRICS_SAMPLE_SECONDS", 10, minimum=0)

# --- Secrets ---------------------------------------------------------------------------------------------
# Fernet keys for secrets at rest, newest first, comma-separated. Rotation: put a new key first, run
# `manage.py rotate_secrets`, then drop the old key. The quick start keeps a generated key in its data directory.
EXECUTOR_FERNET_KEYS = env_list("EXECUTOR_FERNET_KEYS", [quick_start_fernet_key(DATA_DIR)] if QUICK_START else [])

# --- Script execution --------------------------------------------------------------------------------------
# The interpreter of the script runtime (.runtime/, built by `make install`). It is the virtualenv's own
# python, which links straight to the real interpreter: never a pyenv shim (~60 ms per spawn).
EXECUTOR_SCRIPT_PYTHON = env_str("EXECUTOR_SCRIPT_PYTHON", str(BASE_DIR / ".runtime" / "bin" / "python"))
EXECUTOR_STEP_TIMEOUT_SECONDS = env_int("EXECUTOR_STEP_TIMEOUT_SECONDS", 600, minimum=1)
EXECUTOR_OUTPUT_CAP_BYTES = env_int("EXECUTOR_OUTPUT_CAP_BYTES", 1024 * 1024, minimum=1024)
EXECUTOR_WORK_DIR = env_str("EXECUTOR_WORK_DIR", "") or None  # None: the system temp dir
# bwrap (default): every step runs in a bubblewrap sandbox with rlimits (workers/isolation.py); off: plain
# subprocesses, for development where user namespaces are unavailable; the admin then shows a warning.
EXECUTOR_SANDBOX = env_str("EXECUTOR_SANDBOX", "bwrap")
if EXECUTOR_SANDBOX not in {"bwrap", "off"}:
    raise ImproperlyConfigured(f"EXECUTOR_SANDBOX must be bwrap or off, not {EXECUTOR_SANDBOX!r}")
EXECUTOR_STEP_MEMORY_MB = env_int("EXECUTOR_STEP_MEMORY_MB", 2048, minimum=64)  # address space (RLIMIT_AS)
EXECUTOR_STEP_CPU_SECONDS = env_int("EXECUTOR_STEP_CPU_SECONDS", 3600, minimum=1)
EXECUTOR_STEP_MAX_FILE_MB = env_int("EXECUTOR_STEP_MAX_FILE_MB", 1024, minimum=1)
EXECUTOR_STEP_OPEN_FILES = env_int("EXECUTOR_STEP_OPEN_FILES", 1024, minimum=16)
EXECUTOR_STEP_PROCESSES = env_int("EXECUTOR_STEP_PROCESSES", 256, minimum=8)  # processes + threads (RLIMIT_NPROC)
# A root worker runs slot n's steps as host uid/gid BASE + n: give each worker on one host its own range.
EXECUTOR_STEP_UID_BASE = env_int("EXECUTOR_STEP_UID_BASE", 20000, minimum=1000)
EXECUTOR_STEP_TMP_MB = env_int("EXECUTOR_STEP_TMP_MB", 256, minimum=1)
# Warm Python steps (workers/warm.py): each worker slot keeps a sandboxed interpreter with these modules imported
# and forks every Python step from it. off: every step starts a new interpreter. EXECUTOR_WARM_PRELOAD adds modules.
EXECUTOR_WARM_STEPS = env_bool("EXECUTOR_WARM_STEPS", True)
EXECUTOR_WARM_PRELOAD = [
    "ferris_cli.v2", "ferris_ef.base", "fx_ef.base", "requests", "jinja2", "consul", "kafka",
    *env_list("EXECUTOR_WARM_PRELOAD", []),
]  # fmt: skip
# The platform default of SQL steps, for packages whose config.json names no SQL connection (administrators define
# those in the admin; packages never supply a URL: packages/sql_connections.py). Empty: those SQL steps fail with a
# message saying so. Deliberately not the executor's own database: give it a least-privilege role (README).
EXECUTOR_SQL_DATABASE_URL = env_str("EXECUTOR_SQL_DATABASE_URL", "")
EXECUTOR_SQL_STATEMENT_TIMEOUT_SECONDS = env_int("EXECUTOR_SQL_STATEMENT_TIMEOUT_SECONDS", 300, minimum=1)
EXECUTOR_SQL_MAX_ROWS = env_int("EXECUTOR_SQL_MAX_ROWS", 50, minimum=1, maximum=10_000)

# --- Git repositories (packages/git_sync.py, packages/git_urls.py) -----------------------------------------------
# file:// URLs and local paths read the server's own disk: only for tests and development.
EXECUTOR_GIT_ALLOW_LOCAL = env_bool("EXECUTOR_GIT_ALLOW_LOCAL", False)
# Hosts that may resolve to loopback, link-local or private addresses (an internal Git server), by name or address.
EXECUTOR_GIT_ALLOWED_HOSTS = env_list("EXECUTOR_GIT_ALLOWED_HOSTS", [])

# --- Events (executions/events.py, executions/api.py) ----------------------------------------------------------
# Largest event body the API accepts, in bytes; a bigger one is refused with 413 and nothing is stored.
EXECUTOR_EVENT_MAX_BYTES = env_int("EXECUTOR_EVENT_MAX_BYTES", 256 * 1024, minimum=1024)
# An event whose chain is deeper than this (links from the first execution) starts nothing: it stops a loop.
EXECUTOR_EVENT_MAX_CHAIN_DEPTH = env_int("EXECUTOR_EVENT_MAX_CHAIN_DEPTH", 20, minimum=1)
# An event that would start more executions than this starts none (a subscription mistake, not a workload).
EXECUTOR_EVENT_MAX_FAN_OUT = env_int("EXECUTOR_EVENT_MAX_FAN_OUT", 100, minimum=1)
# Requests one API key may make to /fx/ (executor_project/api_rate.py), over fixed windows counted in Redis: a key
# past it is answered 429 with Retry-After. "600/m", "20/s", "1000/15m"; off: no limit.
EXECUTOR_API_RATE_LIMIT = env_rate("EXECUTOR_API_RATE_LIMIT", "6000/m")

# --- Notifications (executions/notifications.py, workers/notification_sending.py) --------------------------------
# The site's address as people reach it, for the execution links in notifications (e.g. https://executor.example).
EXECUTOR_BASE_URL = env_str("EXECUTOR_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
# Email goes through Django's SMTP backend; these are Django's own settings, read from variables of the same name.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)  # STARTTLS, usually on port 587
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # implicit TLS, usually on port 465
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: choose one")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "executor@localhost")
# One SMTP conversation or webhook request may take this long; then the attempt failed (and is retried).
EXECUTOR_NOTIFICATION_TIMEOUT_SECONDS = env_int("EXECUTOR_NOTIFICATION_TIMEOUT_SECONDS", 10, minimum=1, maximum=120)
EMAIL_TIMEOUT = EXECUTOR_NOTIFICATION_TIMEOUT_SECONDS
# Attempts per delivery before it is marked failed; the wait before attempt n+1 is RETRY_SECONDS x 2^(n-1).
EXECUTOR_NOTIFICATION_MAX_ATTEMPTS = env_int("EXECUTOR_NOTIFICATION_MAX_ATTEMPTS", 5, minimum=1, maximum=20)
EXECUTOR_NOTIFICATION_RETRY_SECONDS = env_int("EXECUTOR_NOTIFICATION_RETRY_SECONDS", 30, minimum=1)
# The sweep sends deliveries whose message was lost (the broker was away when the execution finished) this often.
EXECUTOR_NOTIFICATION_SWEEP_SECONDS = env_int("EXECUTOR_NOTIFICATION_SWEEP_SECONDS", 60, minimum=5)
# How many of the failed step's last stderr lines a message quotes.
EXECUTOR_NOTIFICATION_STDERR_LINES = env_int("EXECUTOR_NOTIFICATION_STDERR_LINES", 20, minimum=0, maximum=200)
# Webhooks are posted by workers, so a URL must not make them reach their own network (cloud metadata at
# 169.254.169.254, loopback services, private ranges): such addresses are refused unless the host (name or address,
# as written in the URL) is listed here. Plain http:// is allowed only to listed hosts too.
EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = env_list("EXECUTOR_NOTIFICATION_ALLOWED_HOSTS", [])

# --- Missed schedule times (executions/catch_up.py, run by the reaper) -------------------------------------------
# A fire time with no run GRACE seconds after it is missed (its tick was lost, or beat was down): it is caught up or
# recorded per the package's policy. Only a package's latest missed time counts, if within the look-back (0 = off).
EXECUTOR_SCHEDULE_CATCH_UP_SECONDS = env_int("EXECUTOR_SCHEDULE_CATCH_UP_SECONDS", 24 * 3600, minimum=0)
EXECUTOR_SCHEDULE_CATCH_UP_GRACE_SECONDS = env_int("EXECUTOR_SCHEDULE_CATCH_UP_GRACE_SECONDS", 30, minimum=1)

# --- Retention (executions/retention.py; per-package overrides on the package page) ------------------------------
# Finished executions are deleted after DAYS, failed ones after FAILED_DAYS (never sooner than DAYS), with their
# steps' output, run-form files and, past DAYS, the trigger events nothing refers to any more. Saved runs, pending
# and running executions and each package's last KEEP_LAST executions are never deleted. Off: nothing is deleted
# by beat (`manage.py prune_executions` still works).
EXECUTOR_RETENTION = env_bool("EXECUTOR_RETENTION", True)
EXECUTOR_RETENTION_DAYS = env_int("EXECUTOR_RETENTION_DAYS", 30, minimum=1)
EXECUTOR_RETENTION_FAILED_DAYS = env_int("EXECUTOR_RETENTION_FAILED_DAYS", 90, minimum=1)
EXECUTOR_RETENTION_KEEP_LAST = env_int("EXECUTOR_RETENTION_KEEP_LAST", 20, minimum=0)
# Rows are deleted BATCH_SIZE executions per transaction, with a pause between transactions: short row locks, and
# PostgreSQL's other sessions (admin pages, workers' writes) get the disk and CPU in between.
EXECUTOR_RETENTION_BATCH_SIZE = env_int("EXECUTOR_RETENTION_BATCH_SIZE", 1000, minimum=1, maximum=10_000)
EXECUTOR_RETENTION_PAUSE_MS = env_int("EXECUTOR_RETENTION_PAUSE_MS", 50, minimum=0, maximum=10_000)
# How often beat sends executor.prune_executions (maintenance lane), and how long one run may hold its worker slot:
# a backlog (the first run on a big ledger) is worked off over several runs instead of in one long task.
EXECUTOR_RETENTION_INTERVAL_SECONDS = env_int("EXECUTOR_RETENTION_INTERVAL_SECONDS", 3600, minimum=60)
EXECUTOR_RETENTION_MAX_SECONDS = env_int("EXECUTOR_RETENTION_MAX_SECONDS", 600, minimum=1)
if EXECUTOR_RETENTION_MAX_SECONDS >= EXECUTOR_RETENTION_INTERVAL_SECONDS:
    raise ImproperlyConfigured("EXECUTOR_RETENTION_MAX_SECONDS must be below EXECUTOR_RETENTION_INTERVAL_SECONDS")

# --- Celery (each setting below says which measured fault it answers) -----------------------------------------
# Unset: the embedded Redis that `make run` starts on a socket in the data directory (bin/devstack.py).
REDIS_URL = env_redis_url("REDIS_URL", f"redis+socket://{DATA_DIR / 'redis.sock'}")
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# State lives in PostgreSQL; tasks return nothing worth storing.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Without acks_late a worker killed mid-run loses the message; with it, the message comes back and the claim
# in the database (workers/lease.py) makes the redelivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Celery's Django fixup closes the database connection around every task unless this is set: a new PostgreSQL
# connection per execution costs milliseconds of every run. Tasks call close_old_connections() instead, which
# honours CONN_MAX_AGE and CONN_HEALTH_CHECKS (workers/tasks.py).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The longest an execution may take; Redis redelivers an unacked message after the visibility timeout, so it
# must stay above that or a second copy of a long run would be delivered while the first still works.
EXECUTOR_MAX_EXECUTION_SECONDS = env_int("EXECUTOR_MAX_EXECUTION_SECONDS", 6 * 3600, minimum=60)
# Publishing fails fast when Redis is down, full (maxmemory with noeviction) or frozen, so an API request or an
# admin click answers within about a second ("recorded, queued as soon as the broker is back") instead of hanging:
# connect and command timeouts, and one retry (it replaces a pooled connection a Redis restart broke).
# The run stays pending and the reaper publishes it once Redis takes writes again (executions/queueing.py).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": EXECUTOR_MAX_EXECUTION_SECONDS + 600,
    "socket_connect_timeout": 1,
    "socket_timeout": 3,  # above the workers' 1 s BRPOP, which must not time out
}
CELERY_BROKER_CONNECTION_TIMEOUT = 1
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}

# The API's request counts (EXECUTOR_API_RATE_LIMIT) live beside the messages, in the broker's Redis; an unreachable
# Redis costs a request at most the connect timeout, then it goes through uncounted (executor_project/api_rate.py).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "api_rate": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_py_url(REDIS_URL),
        "KEY_PREFIX": "executor:api-rate",
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": Retry(NoBackoff(), 0)},
    },
}
RATELIMIT_USE_CACHE = "api_rate"
RATELIMIT_FAIL_OPEN = True  # a count that could not be read (a key expiring in between) lets the request through

# --- Crash recovery (workers/heartbeat.py, workers/reaper.py, workers/lease.py) -----------------------------------
# Each worker's main process refreshes the heartbeat of all the executions its pool runs, in one UPDATE, this
# often. An execution whose heartbeat is older than the lease lost its worker: the reaper, run every
# EXECUTOR_REAPER_SECONDS, fails it (or runs it again, Package.retries_after_worker_loss). A dead host is so
# found within lease + reaper period (13 s by default); a pool process that dies is resolved by its own worker
# within about a second, without waiting for the lease.
EXECUTOR_HEARTBEAT_SECONDS = env_int("EXECUTOR_HEARTBEAT_SECONDS", 3, minimum=1)
EXECUTOR_LEASE_SECONDS = env_int("EXECUTOR_LEASE_SECONDS", 10, minimum=5)
EXECUTOR_REAPER_SECONDS = env_int("EXECUTOR_REAPER_SECONDS", 3, minimum=1)
if EXECUTOR_LEASE_SECONDS < 3 * EXECUTOR_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("EXECUTOR_LEASE_SECONDS must be at least 3 x EXECUTOR_HEARTBEAT_SECONDS")
# The reaper takes a longer pause between its runs for a possible database outage and then gives workers a lease
# to beat again (workers/reaper.py): its own period must stay below that, or it would never reap.
if EXECUTOR_REAPER_SECONDS >= EXECUTOR_LEASE_SECONDS - EXECUTOR_HEARTBEAT_SECONDS - 1:
    raise ImproperlyConfigured(
        "EXECUTOR_REAPER_SECONDS must be below EXECUTOR_LEASE_SECONDS - EXECUTOR_HEARTBEAT_SECONDS - 1"
    )
# A database blink (PostgreSQL restarting) is ridden out: a running step goes on for this long without the
# database, then it is stopped, `failed: the database was unreachable for 60 s`; its final writes wait for the
# database up to 10 minutes (workers/lease.py).
EXECUTOR_DATABASE_OUTAGE_SECONDS = env_int("EXECUTOR_DATABASE_OUTAGE_SECONDS", 60, minimum=1)
# A task that cannot reach the database holds its message this long (the worker takes no other meanwhile), then
# hands it back to Redis to be delivered again, instead of consuming it (executor_project/redelivery.py).
EXECUTOR_DATABASE_WAIT_SECONDS = env_int("EXECUTOR_DATABASE_WAIT_SECONDS", 30, minimum=1)
# On SIGTERM, how long a running step may go on before it is stopped (workers/shutdown.py).
EXECUTOR_SHUTDOWN_GRACE_SECONDS = env_int("EXECUTOR_SHUTDOWN_GRACE_SECONDS", 30, minimum=0)
# Lost messages are published again within one reaper cycle (workers/republish.py); this bound is for the one
# case it cannot see at once: a message a worker reserved this long ago and never started (the worker died; a live
# one starts what it reserves at once, or holds it up to EXECUTOR_DATABASE_WAIT_SECONDS while the database is away).
EXECUTOR_REPUBLISH_AFTER_SECONDS = env_int("EXECUTOR_REPUBLISH_AFTER_SECONDS", 60, minimum=30)
# --- Health of the processes (executor_project/liveness.py, `manage.py check_health`, the dashboard) --------------
# A worker or beat silent this long is unhealthy: a worker's heartbeat (every EXECUTOR_HEARTBEAT_SECONDS), its
# consumer's event loop, its starving beside waiting messages; beat's tick (at least every 5 s). At least 3 beats.
EXECUTOR_HEALTH_STALE_SECONDS = env_int("EXECUTOR_HEALTH_STALE_SECONDS", 30, minimum=10)
if EXECUTOR_HEALTH_STALE_SECONDS < 3 * EXECUTOR_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("EXECUTOR_HEALTH_STALE_SECONDS must be at least 3 x EXECUTOR_HEARTBEAT_SECONDS")
# The admin dashboard warns about a lane whose oldest pending execution has waited longer than this.
EXECUTOR_LANE_WAIT_WARNING_SECONDS = env_int("EXECUTOR_LANE_WAIT_WARNING_SECONDS", 300, minimum=1)
# DatabaseScheduler copies this into django-celery-beat's tables at start-up.
CELERY_BEAT_SCHEDULE = {
    "executor.reap": {
        "task": "executor.reap",
        "schedule": float(EXECUTOR_REAPER_SECONDS),
        # A reap that waited longer than a period is superseded by the next one: drop it.
        "options": {"queue": "maintenance", "expires": EXECUTOR_REAPER_SECONDS},
    },
    "executor.sweep_notifications": {
        "task": "executor.sweep_notifications",
        "schedule": float(EXECUTOR_NOTIFICATION_SWEEP_SECONDS),
        "options": {"queue": "maintenance", "expires": EXECUTOR_NOTIFICATION_SWEEP_SECONDS},
    },
    # Always installed (DatabaseScheduler keeps an entry once copied): EXECUTOR_RETENTION=false makes it a no-op.
    "executor.prune_executions": {
        "task": "executor.prune_executions",
        "schedule": float(EXECUTOR_RETENTION_INTERVAL_SECONDS),
        "options": {"queue": "maintenance", "expires": EXECUTOR_RETENTION_INTERVAL_SECONDS},
    },
}
