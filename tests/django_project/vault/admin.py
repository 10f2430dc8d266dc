from django.conf import settings

if "django.contrib.admin" in settings.INSTALLED_APPS:
    from django.contrib import admin

    from vault.models import Connector, Credential

    admin.site.register(Credential)
    admin.site.register(Connector)
