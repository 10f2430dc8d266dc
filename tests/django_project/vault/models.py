from django.db import models

from keyturn.integrations.django.fields import EncryptedCharField, EncryptedTextField


class Credential(models.Model):
    name = models.CharField(max_length=64)
    api_key = EncryptedCharField(max_length=255, null=True, blank=True)
    notes = EncryptedTextField(blank=True, default="")
