"""Runnable examples of asyncwsgi; each module's docstring says how to run it.

- ``asyncio_service.py``: an asyncio program with a background task that also serves a Flask admin UI with
  ``asyncwsgi.Server`` on the same loop (``python examples/asyncio_service.py``).
- ``starlette_mount.py``: a Starlette app mounting a Flask app through ``asyncwsgi.to_asgi``, run with uvicorn
  (``python examples/starlette_mount.py``).
- ``django_project/``: a small Django project (``asyncwsgi serve mysite.wsgi:application --app-dir
  examples/django_project``).
- ``middleware_stack.py``: werkzeug's ``ProxyFix`` and ``DispatcherMiddleware`` and a hand-written middleware around a
  Flask app (``asyncwsgi serve examples.middleware_stack:app``).
- ``frameworks/``: the same tiny app in Pyramid, Bottle and Falcon (``asyncwsgi serve
  examples.frameworks.bottle_app:app``, ``...pyramid_app:app``, ``...falcon_app:app``).

``tests/test_examples.py`` runs every one of them.
"""
