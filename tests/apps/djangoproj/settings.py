"""Minimal settings: no database, no installed apps; CSRF protection on (cookie based)."""

from __future__ import annotations

SECRET_KEY = "asyncwsgi-tests-only-not-a-secret-4b7e0f9c2d"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.apps.djangoproj.urls"
WSGI_APPLICATION = "tests.apps.djangoproj.wsgi.application"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": False,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
USE_I18N = False
