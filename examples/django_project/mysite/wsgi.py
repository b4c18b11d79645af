"""The WSGI entry point, as ``django-admin startproject`` writes it: ``asyncwsgi serve mysite.wsgi:application``
(see ``mysite/__init__.py`` for the full command)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
