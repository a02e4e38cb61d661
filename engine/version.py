__version__ = "0.1.0"


def build() -> str:
    """Which build serves: the request path compiled by setup.py (``POLYCORN_COMPILE=1``) or not."""
    from polycorn import connection

    return "interpreted" if connection.__file__.endswith(".py") else "request path compiled (mypyc)"
