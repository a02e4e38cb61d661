"""Apps and helpers for the subprocess (CLI, signal) tests.

The app modules here are imported by a ``polycorn`` child process with ``--app-dir`` pointing at
this folder, so they are plain top-level modules there.
"""
