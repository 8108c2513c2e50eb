"""Where events go: JSON lines files and the in-process EventBus."""
