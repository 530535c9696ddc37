"""One module per XML-RPC service; ``build_services`` maps each service name to its handler."""

from __future__ import annotations

from typing import Any

from worknet.services.categories import CategoriesService
from worknet.services.gigs import GigsService
from worknet.services.messages import MessagesService
from worknet.services.notifications import NotificationsService
from worknet.services.orders import OrdersService
from worknet.services.payments import PaymentsService
from worknet.services.reviews import ReviewsService
from worknet.services.users import UsersService

SERVICES: dict[str, type] = {
    "categoriesService": CategoriesService,
    "usersService": UsersService,
    "gigsService": GigsService,
    "messagesService": MessagesService,
    "notificationsService": NotificationsService,
    "reviewsService": ReviewsService,
    "ordersService": OrdersService,
    "paymentsService": PaymentsService,
}


def build_services(store: Any, settings: Any) -> dict[str, Any]:
    return {name: cls(store, settings) for name, cls in SERVICES.items()}
