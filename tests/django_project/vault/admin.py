from django.conf import settings

if "django.contrib.admin" in settings.INSTALLED_APPS:
    from django.contrib import admin

    from vault.models import Credential

    admin.site.register(Credential)
