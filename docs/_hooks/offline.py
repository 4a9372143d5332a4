"""MkDocs hook: the site works offline -- no script, style or font from a CDN.

Material for MkDocs renders a ```` ```mermaid ```` block with the ``mermaid`` library, which it
loads from a CDN unless a ``mermaid`` global already exists. This hook puts the copy shipped
in ``docs/javascripts/vendor/mermaid/`` (see ``SOURCES.txt`` there) before Material's own
script, on the pages that hold a diagram only (it is 2.5 MB). MathJax, needed by every page
with math, is listed in ``extra_javascript`` from ``docs/javascripts/vendor/mathjax/``, and
``theme.font: false`` keeps the theme from loading Google Fonts.
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.utils import get_relative_url

MERMAID = "javascripts/vendor/mermaid/mermaid.tiny.js"
BUNDLE = re.compile(r'<script src="[^"]*assets/javascripts/bundle\.[0-9a-f]+\.min\.js"')


def on_post_page(output: str, *, page: Any, config: Any) -> str:
    if 'class="mermaid"' not in output:
        return output
    match = BUNDLE.search(output)
    if match is None:
        raise ValueError(f"{page.file.src_uri}: no theme script to put mermaid before")
    tag = f'<script src="{get_relative_url(MERMAID, page.url)}"></script>\n    '
    return output[: match.start()] + tag + output[match.start() :]
