"""The web service: API, pages, auth, database models and the admin CLI."""
