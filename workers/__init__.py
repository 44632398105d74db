"""The worker launcher: one Celery worker process per GPU (or N CPU workers), supervised."""
