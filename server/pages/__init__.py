"""The web pages: server-rendered Jinja2 templates (frontend/templates) with htmx for the live parts."""
