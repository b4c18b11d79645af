"""URL configuration: ``/``, ``/form/``, ``/stream/``, ``/download/``; everything else is Django's 404."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("form/", views.form, name="form"),
    path("stream/", views.stream, name="stream"),
    path("download/", views.download, name="download"),
]
