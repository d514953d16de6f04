"""Plain sync views: enqueueing a task is a normal call (Soniq's ``app.sync`` underneath)."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from shop.models import Order
from shop.tasks import ship_order

try:
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks.exceptions import TaskResultDoesNotExist


def create_order(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    quantity = int(request.GET.get("quantity", "1"))
    try:
        with transaction.atomic():
            order = Order.objects.create(quantity=quantity)
            result = ship_order.enqueue(order_id=order.pk)  # written when this block commits
            if request.GET.get("rollback"):
                raise RuntimeError("rolled back on purpose")
    except RuntimeError as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"order_id": order.pk, "task_id": result.id}, status=202)


def order_detail(request: HttpRequest, order_id: int) -> JsonResponse:
    order = Order.objects.get(pk=order_id)
    return JsonResponse({"order_id": order.pk, "shipped": order.shipped})


def task_detail(request: HttpRequest, task_id: str) -> JsonResponse:
    try:
        result = ship_order.get_result(task_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such task"}, status=404)
    return JsonResponse({
        "status": str(result.status),
        "return_value": result.return_value if result.status == "SUCCESSFUL" else None,
        "errors": [error.exception_class_path for error in result.errors],
        "attempts": result.attempts,
        "queue": result.task.queue_name,
    })
