from django.db import models

from keyturn.integrations.django.fields import EncryptedCharField


class Tiny(models.Model):
    pin = EncryptedCharField(max_length=20)
