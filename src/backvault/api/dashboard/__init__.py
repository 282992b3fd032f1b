"""The web dashboard served by the API server at /backvault/dashboard/ (read-only, server-rendered)."""

from backvault.api.dashboard.routes import BASE_PATH, dashboard_router

__all__ = ["BASE_PATH", "dashboard_router"]
