"""``make demo``: a realistic demo marketplace, loaded through the daemon's own XML-RPC API.

Categories, sellers and buyers (who can log in: every demo account's password
is :data:`DEMO_PASSWORD`), gigs written in several languages, orders in every
status with their payments (completed, failed, partially and fully refunded),
reviews, conversations and notifications.

Running it twice changes nothing the second time: every create either carries
a client-chosen id or an idempotency key, or is looked up first (accounts by
username, gigs by title, order steps by the order's current status, refunds
by the payment's refunded total).

    python -m worknet.demo [--url http://127.0.0.1:8000/RPC2] [--token ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import xmlrpc.client
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

DEMO_PASSWORD = "worknet-demo-2026"  # noqa: S105 - the documented password of the demo accounts
EMAIL_DOMAIN = "demo.worknet.example"


class DemoError(Exception):
    pass


def demo_id(*parts: object) -> str:
    """A stable 24-hex id for a client-chosen id argument (the same on every run)."""
    return hashlib.sha256("/".join(["worknet-demo", *map(str, parts)]).encode()).hexdigest()[:24]


CATEGORIES = [
    ("Graphic Design", "graphic-design", "Logos, brand identities, illustrations and print design."),
    ("Programming & Tech", "programming-tech", "Web and mobile development, APIs, automation and data work."),
    ("Writing & Translation", "writing-translation", "Articles, copywriting, proofreading and translation."),
    ("Video & Animation", "video-animation", "Explainer videos, editing, motion graphics and subtitles."),
    ("Music & Audio", "music-audio", "Voice-over, mixing and mastering, jingles and podcasts."),
    ("Digital Marketing", "digital-marketing", "SEO, social media, e-mail campaigns and analytics."),
]

# username, role, country, bio, skills
SELLERS = [
    ("amelie_dubois", "FR", "Graphiste indépendante à Lyon : identités visuelles sobres et durables.",
     ["branding", "illustration", "typographie"]),
    ("kenji_tanaka", "JP", "東京在住のフルスタック開発者。Python と TypeScript が得意です。",
     ["python", "typescript", "api"]),
    ("lucia_moreno", "ES", "Traductora y redactora en Sevilla. Español, inglés y francés.",
     ["traducción", "copywriting", "seo"]),
    ("jonas_weber", "DE", "Motion-Designer aus Berlin. Erklärvideos, die man versteht.",
     ["after effects", "animation", "storyboard"]),
    ("priya_sharma", "IN", "Audio engineer in Pune: podcasts, voice-overs and clean mixes.",
     ["mixing", "mastering", "voice-over"]),
    ("tiago_silva", "BR", "Especialista em marketing digital em Porto Alegre. Resultados medidos.",
     ["seo", "google ads", "analytics"]),
]
BUYERS = [
    ("northwind_ops", "GB", "Operations team at a small logistics company."),
    ("sam_carter", "US", "Founder of a two-person coffee roastery in Portland."),
    ("maria_rossi", "IT", "Responsabile marketing di una cantina in Toscana."),
    ("olu_adeyemi", "NG", "Product manager building a fintech app in Lagos."),
]

# seller, category slug, title, description, price, delivery days, tags
GIGS = [
    ("amelie_dubois", "graphic-design", "Je crée le logo de votre marque",
     "Trois pistes de logo, deux séries de retouches et tous les fichiers sources (AI, SVG, PNG). "
     "Je commence par un court questionnaire sur votre activité et votre public.", "120.00", 5,
     ["logo", "branding", "identité"]),
    ("amelie_dubois", "graphic-design", "Illustration éditoriale pour votre blog",
     "Une illustration originale au format web et impression, dans un style ligne claire et couleurs douces.",
     "65.00", 4, ["illustration", "blog"]),
    ("kenji_tanaka", "programming-tech", "Python で業務自動化スクリプトを作成します",
     "Excel の集計、CSV の変換、Web API との連携など、毎日の手作業を自動化します。テストと説明書付き。",
     "150.00", 7, ["python", "自動化", "api"]),
    ("kenji_tanaka", "programming-tech", "I will build a REST API with tests",
     "A documented REST API (Python or TypeScript) with authentication, automated tests and a Dockerfile. "
     "You get the repository and a short video walkthrough.", "480.00", 14, ["api", "backend", "tests"]),
    ("lucia_moreno", "writing-translation", "Traducción profesional inglés-español",
     "Traduzco sitios web, manuales y contratos con terminología revisada. Hasta 1.500 palabras por pedido.",
     "45.00", 3, ["traducción", "inglés", "español"]),
    ("lucia_moreno", "writing-translation", "Textos SEO para tu tienda online",
     "Descripciones de producto claras y optimizadas para buscadores, adaptadas al tono de tu marca.",
     "35.50", 4, ["seo", "redacción", "ecommerce"]),
    ("jonas_weber", "video-animation", "Erklärvideo mit Motion Graphics (60 Sekunden)",
     "Drehbuch, Sprecher und Animation aus einer Hand. Zwei Korrekturschleifen, Lieferung in Full HD.",
     "390.00", 10, ["erklärvideo", "animation"]),
    ("jonas_weber", "video-animation", "Subtitles and captions for your videos",
     "Accurate, time-coded subtitles (SRT or burned in) in English or German, up to 20 minutes of video.",
     "30.00", 2, ["subtitles", "captions"]),
    ("priya_sharma", "music-audio", "Podcast editing and mastering",
     "Noise removal, levelling, music beds and loudness to platform standards for one episode up to 60 min.",
     "55.00", 3, ["podcast", "mixing"]),
    ("priya_sharma", "music-audio", "Warm English voice-over for your brand",
     "A natural, friendly voice-over up to 200 words, recorded in a treated studio, with one free retake.",
     "40.00", 2, ["voice-over", "english"]),
    ("tiago_silva", "digital-marketing", "Auditoria completa de SEO do seu site",
     "Análise técnica, palavras-chave e concorrência, com um plano de ações priorizado em português.",
     "210.00", 6, ["seo", "auditoria"]),
    ("tiago_silva", "digital-marketing", "Campanha de Google Ads pronta para rodar",
     "Pesquisa de palavras-chave, anúncios, extensões e acompanhamento de conversões configurados.",
     "175.00", 5, ["google ads", "ppc"]),
]


@dataclass(frozen=True)
class OrderPlan:
    key: str
    buyer: str
    gig: int  # index into GIGS
    quantity: int
    status: str  # the order's final status
    payment: str = ""  # "", "completed", "failed"
    refund: str = ""  # "", "partial", "full"
    review: tuple[int, str] | None = None


ORDERS = [
    OrderPlan("o1", "sam_carter", 0, 1, "completed", "completed",
              review=(5, "Amélie understood our roastery at once. The logo is perfect on bags and cups.")),
    OrderPlan("o2", "maria_rossi", 4, 2, "completed", "completed", refund="partial",
              review=(4, "Traduzione precisa e puntuale. Un piccolo ritardo sulla seconda parte.")),
    OrderPlan("o3", "olu_adeyemi", 3, 1, "completed", "completed", refund="full",
              review=(2, "Good code, but the scope we agreed on changed; the refund was handled fairly.")),
    OrderPlan("o4", "northwind_ops", 2, 1, "in_progress", "completed"),
    OrderPlan("o5", "sam_carter", 8, 3, "in_progress", "completed"),
    OrderPlan("o6", "maria_rossi", 10, 1, "disputed", "completed"),
    OrderPlan("o7", "olu_adeyemi", 6, 1, "pending"),
    OrderPlan("o8", "northwind_ops", 11, 1, "pending", "failed"),
    OrderPlan("o9", "sam_carter", 1, 1, "cancelled"),
    OrderPlan("o10", "olu_adeyemi", 9, 2, "cancelled", "completed"),
    OrderPlan("o11", "northwind_ops", 7, 2, "completed", "completed",
              review=(5, "Subtitles were spot on, delivered a day early. Thank you!")),
]

# buyer, seller, [(from buyer?, text)]
CONVERSATIONS = [
    ("sam_carter", "amelie_dubois", [
        (True, "Hi Amélie! Could the logo work in one colour for our stamps?"),
        (False, "Bien sûr ! Je prépare une version monochrome avec les fichiers finaux."),
        (True, "Perfect, thank you."),
    ]),
    ("maria_rossi", "lucia_moreno", [
        (True, "Ciao Lucía, ti mando il glossario della cantina per la traduzione."),
        (False, "¡Gracias, María! Lo uso desde la primera página."),
    ]),
    ("olu_adeyemi", "kenji_tanaka", [
        (True, "Hi Kenji, can the API include rate limiting?"),
        (False, "Yes — I'll add it with tests. 了解しました！"),
    ]),
    ("northwind_ops", "tiago_silva", [
        (True, "Our card payment failed, we'll retry next week."),
        (False, "Sem problema! The campaign draft is ready whenever you are."),
    ]),
]


def _money(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.01")))


class Loader:
    def __init__(self, rpc: Any, progress: Any) -> None:
        self.rpc = rpc
        self.progress = progress
        self.users: dict[str, str] = {}
        self.categories: dict[str, str] = {}
        self.gigs: list[str] = []
        self.counts: dict[str, int] = {}

    def call(self, method: str, *args: Any, allow: tuple[str, ...] = ()) -> dict:
        target: Any = self.rpc
        for part in method.split("."):
            target = getattr(target, part)
        try:
            result = target(*args)
        except xmlrpc.client.Fault as fault:
            raise DemoError(f"{method}: fault {fault.faultCode}: {fault.faultString}") from None
        if isinstance(result, dict) and result.get("success") is False and result.get("code") not in allow:
            raise DemoError(f"{method}: {result.get('code')}: {result.get('error')}")
        return result

    def step(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.progress.update(1)

    # -- the parts --------------------------------------------------------------------------------------------------

    def load_categories(self) -> None:
        for name, slug, description in CATEGORIES:
            created = self.call("categoriesService.create", name, slug, description, allow=("CONFLICT",))
            if created["success"]:
                self.categories[slug] = created["category_id"]
            else:
                self.categories[slug] = self.call("categoriesService.get_by_slug", slug)["category"]["id"]
            self.step("categories")

    def _account(self, username: str, role: str, country: str, bio: str, skills: list[str]) -> None:
        email = f"{username.replace('_', '.')}@{EMAIL_DOMAIN}"
        created = self.call("usersService.register", username, email, DEMO_PASSWORD, role, allow=("CONFLICT",))
        if created["success"]:
            user_id = created["user_id"]
        else:
            found = self.call("usersService.get_all", 1, 100, {"search": username})["users"]
            matches = [u["id"] for u in found if u["username"] == username]
            if not matches:
                raise DemoError(f"{username} ({email}) exists in another form: is this database a demo one?")
            user_id = matches[0]
        self.users[username] = user_id
        updates: dict[str, Any] = {"country": country, "bio": bio}
        if skills:
            updates["skills"] = skills
        self.call("usersService.update_profile", user_id, updates)
        self.step("users")

    def load_users(self) -> None:
        for username, country, bio, skills in SELLERS:
            self._account(username, "freelancer", country, bio, skills)
        for username, country, bio in BUYERS:
            self._account(username, "client", country, bio, [])

    def load_gigs(self) -> None:
        existing: dict[str, dict[str, str]] = {}
        for seller, slug, title, description, price, days, tags in GIGS:
            seller_id = self.users[seller]
            if seller not in existing:
                listed = self.call("gigsService.get_by_user", seller_id, 1, 100)["gigs"]
                existing[seller] = {g["title"]: g["id"] for g in listed}
            if title in existing[seller]:
                self.gigs.append(existing[seller][title])
            else:
                data = {"title": title, "description": description, "category": slug, "price": price,
                        "deliveryTime": days, "revisionNumber": 2, "tags": tags}
                self.gigs.append(self.call("gigsService.create", seller_id, data)["gig_id"])
            self.step("gigs")

    def _paid(self, order_id: str, payment_id: str, total: str, outcome: str) -> None:
        self.call("paymentsService.create", payment_id, order_id, total, "stripe")
        if self.call("paymentsService.get_status", payment_id)["status"] == "pending":
            self.call("paymentsService.process", payment_id, outcome)

    def _order(self, plan: OrderPlan) -> None:
        gig = GIGS[plan.gig]
        total = _money(Decimal(gig[4]) * plan.quantity)
        created = self.call("ordersService.create", self.gigs[plan.gig], self.users[plan.buyer], plan.quantity,
                            total, {"idempotency_key": demo_id("order", plan.key)})
        order_id = created["order_id"]
        status = self.call("ordersService.get_by_id", order_id)["order"]["status"]
        payment_id = demo_id("payment", plan.key)
        if plan.payment and status == "pending":
            self._paid(order_id, payment_id, total, plan.payment)
            status = self.call("ordersService.get_by_id", order_id)["order"]["status"]
        if status != plan.status:
            if plan.status == "cancelled":
                self.call("ordersService.cancel", order_id, "The buyer's plans changed.")
            elif status == "in_progress" and plan.status in ("completed", "disputed"):
                reason = "Delivered and accepted." if plan.status == "completed" else "The delivery is incomplete."
                self.call("ordersService.update_status", order_id, plan.status, reason)
        if plan.refund and self.call("paymentsService.get_status", payment_id)["refunded_total"] == 0:
            amount = total if plan.refund == "full" else _money(Decimal(total) / 4)
            self.call("paymentsService.refund", payment_id, amount)
        if plan.review:
            rating, comment = plan.review
            self.call("reviewsService.create", demo_id("review", plan.key), self.gigs[plan.gig], rating,
                      {"user_id": self.users[plan.buyer], "order_id": order_id, "comment": comment})
        self.step("orders")

    def load_orders(self) -> None:
        for plan in ORDERS:
            self._order(plan)

    def load_conversations(self) -> None:
        for n, (buyer, seller, messages) in enumerate(CONVERSATIONS):
            conversation = self.call("messagesService.start_conversation", self.users[buyer], self.users[seller])
            for m, (from_buyer, text) in enumerate(messages):
                sender, reader = (buyer, seller) if from_buyer else (seller, buyer)
                message_id = demo_id("message", n, m)
                self.call("messagesService.create", message_id, conversation["conversation_id"],
                          self.users[sender], {"text": text})
                if m < len(messages) - 1:  # the last message of each conversation stays unread
                    self.call("messagesService.mark_as_read", message_id, self.users[reader])
            self.step("conversations")

    def load_notifications(self) -> None:
        for username, user_id in self.users.items():
            self.call("notificationsService.create", demo_id("welcome", username), user_id, "system",
                      {"message": "Welcome to WorkNet! Complete your profile to get discovered.", "link": "/profile"})
            self.step("notifications")

    def run(self) -> None:
        self.load_categories()
        self.load_users()
        self.load_gigs()
        self.load_orders()
        self.load_conversations()
        self.load_notifications()


STEPS = len(CATEGORIES) + len(SELLERS) + len(BUYERS) + len(GIGS) + len(ORDERS) + len(CONVERSATIONS) \
    + len(SELLERS) + len(BUYERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worknet.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/RPC2", help="the daemon's XML-RPC endpoint")
    parser.add_argument("--token", default=os.environ.get("RPC_AUTH_TOKEN", ""),
                        help="RPC_AUTH_TOKEN of the daemon (default $RPC_AUTH_TOKEN)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    options = parser.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        print("make demo needs tqdm: pip install 'worknet-rpc[demo]'", file=sys.stderr)
        return 2
    headers = [("Authorization", f"Bearer {options.token}")] if options.token else []
    rpc = xmlrpc.client.ServerProxy(options.url, allow_none=True, headers=headers)
    try:
        rpc.ping()
    except xmlrpc.client.ProtocolError as e:
        if e.errcode == 401:  # the daemon requires RPC_AUTH_TOKEN (ping included)
            which = "is wrong (not the daemon's)" if options.token else "is missing"
            print(f"the daemon at {options.url} requires its RPC_AUTH_TOKEN and the token {which}: "
                  "run make demo with RPC_AUTH_TOKEN=<the daemon's token> in the environment (or --token)",
                  file=sys.stderr)
        else:
            print(f"the daemon at {options.url} answers HTTP {e.errcode} {e.errmsg}: is it WorkNet RPC's /RPC2?",
                  file=sys.stderr)
        return 1
    except OSError as e:
        print(f"the daemon at {options.url} does not answer ({e}); start it with make run", file=sys.stderr)
        return 1
    with tqdm(total=STEPS, desc="demo marketplace", unit="item", disable=options.quiet) as progress:
        loader = Loader(rpc, progress)
        try:
            loader.run()
        except DemoError as e:
            progress.close()
            print(f"demo stopped: {e}", file=sys.stderr)
            return 1
    print("loaded: " + ", ".join(f"{n} {what}" for what, n in loader.counts.items()))
    print(f"log in as any demo user with the password {DEMO_PASSWORD!r}, e.g. "
          f"sam.carter@{EMAIL_DOMAIN} (buyer) or amelie.dubois@{EMAIL_DOMAIN} (seller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
