"""A minimal Django project in one module: settings configured in code, one URLconf, two views."""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="polycorn-tests-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
)
django.setup()


def hello(request):  # type: ignore[no-untyped-def]
    return JsonResponse(
        {"framework": "django", "method": request.method, "path": request.path, "q": request.GET.get("q", "")}
    )


def echo(request):  # type: ignore[no-untyped-def]
    return HttpResponse(request.body[::-1], content_type="application/octet-stream")


urlpatterns = [path("hello/", hello), path("echo/", echo)]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
