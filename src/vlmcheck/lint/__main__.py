"""``python -m vlmcheck.lint > docs/lint.md``: print the lint catalogue page."""

from vlmcheck.lint.catalogue import render_markdown

print(render_markdown(), end="")
