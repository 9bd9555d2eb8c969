"""The HTTP service: ``create_app(test_config=None)`` Flask factory, served by gunicorn."""

from api.app import create_app

__all__ = ["create_app"]
