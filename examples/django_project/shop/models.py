from __future__ import annotations

from django.db import models


class Order(models.Model):
    quantity = models.PositiveIntegerField()
    shipped = models.BooleanField(default=False)
