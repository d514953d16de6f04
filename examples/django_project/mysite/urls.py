from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("orders/", views.create_order),
    path("orders/<int:order_id>/", views.order_detail),
    path("tasks/<str:task_id>/", views.task_detail),
]
