"""A minimal Django project served by asyncwsgi in the framework tests."""
