"""``GET /``: the chat page, one static HTML file shipped with the package (``static/chat.html``, no build step).

A person types as the customer and sees the reply (streamed from ``/v1/chat/completions`` when a reply model is
served), the intent with its confidence and alternatives, the out-of-scope flag and the rule checks (``/v1/intent``,
``cs_rule_violations``). The page itself needs no API key; when the server has one, the page shows a field for it
and sends it as ``Authorization: Bearer``. Model output is only ever set as text, and the page is sent with a
Content-Security-Policy that allows its own inline script and style (by hash) and requests to this server only, so
nothing a model or a customer writes can run as script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def chat_page() -> tuple[bytes, dict[str, str]]:
    """The page's bytes and the headers it is sent with."""
    html = resources.files("cs_lightning.serving").joinpath("static/chat.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
              "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
    return html.encode("utf-8"), headers
