#!/usr/bin/env python
"""Django's command-line utility for this example project (``python manage.py check``, ``shell``...).

Serve it with asyncwsgi, from this directory::

    asyncwsgi serve mysite.wsgi:application

or from the repository root: ``asyncwsgi serve mysite.wsgi:application --app-dir examples/django_project``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
