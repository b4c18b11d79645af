"""URLs of the example project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("notes/", views.notes, name="notes"),
    path("api/echo/", views.echo, name="echo"),
    path("stream/", views.stream, name="stream"),
]
