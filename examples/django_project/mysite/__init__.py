"""A small, self-contained Django project served by asyncwsgi.

From the repository root (``pip install -e . django``)::

    asyncwsgi serve mysite.wsgi:application --app-dir examples/django_project --port 8000

or, from ``examples/django_project``, ``asyncwsgi serve mysite.wsgi:application`` (the current directory is on the
import path). Add ``--threads 32``, ``-w 4``, ``--root-path /site``... as for any app. Pages: ``/`` (a page),
``/notes/`` (a form with CSRF protection), ``/api/echo/`` (JSON), ``/stream/?n=5`` (a streamed response).
No database is needed.
"""
