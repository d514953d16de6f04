"""Django tasks: plain ``@task`` functions; the Soniq backend runs them in ``soniq worker``."""

from __future__ import annotations

from typing import Any

try:
    from django.tasks import task  # Django >= 6
except ImportError:
    from django_tasks import task  # Django 5.2 with the django-tasks backport

from shop.models import Order

STOCK = 10


class OutOfStockError(Exception):
    pass


@task(queue_name="shipping", priority=10)
def ship_order(order_id: int) -> dict[str, Any]:
    order = Order.objects.get(pk=order_id)  # committed before the job was written
    if order.quantity > STOCK:
        raise OutOfStockError(f"only {STOCK} in stock, order {order_id} wants {order.quantity}")
    order.shipped = True
    order.save(update_fields=["shipped"])
    return {"order_id": order_id, "shipped": True}
