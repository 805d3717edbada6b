"""Route tables operators edit (YAML) and their JSON Schemas: data, shipped as ``router.routes``."""

from importlib.resources import files

__all__ = ["DEFAULT_ROUTES", "path_of"]


def path_of(name: str) -> str:
    return str(files(__name__) / name)


DEFAULT_ROUTES = path_of("default.yaml")
