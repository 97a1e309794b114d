"""The edge's resources, one module each; every one declares its own routes."""

from .customers import Customers
from .dashboard import Dashboard
from .dead_letters import DeadLetters
from .docs import Docs
from .health import Health
from .pages import Pages
from .workflows import Workflows

__all__ = ["Customers", "Dashboard", "DeadLetters", "Docs", "Health", "Pages", "Workflows"]
