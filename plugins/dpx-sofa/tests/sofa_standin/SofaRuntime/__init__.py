"""Stand-in for SofaPython3's ``SofaRuntime``, for dpx-sofa's tests only (see ``Sofa``)."""

from Sofa import Core

#: Every name passed to importPlugin, in order, for tests to inspect.
imported: list[str] = []


def importPlugin(name: str) -> bool:
    imported.append(name)
    return Core.load_plugin(name)
