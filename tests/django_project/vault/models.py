from django.db import models

from keyturn.integrations.django.fields import (
    EncryptedCharField,
    EncryptedJSONField,
    EncryptedTextField,
)


class Credential(models.Model):
    name = models.CharField(max_length=64)
    api_key = EncryptedCharField(max_length=255, null=True, blank=True)
    notes = EncryptedTextField(blank=True, default="")


class Connector(models.Model):
    """Floh's connector_config: secrets among plain settings in one JSON document."""

    name = models.CharField(max_length=64)
    config = EncryptedJSONField(fields=["$.apiKey", "$.headers[*].value"], null=True)
