"""A stand-in for SofaPython3's ``Sofa`` package, for dpx-sofa's tests only.

SOFA cannot be installed where dpx-sofa is developed and tested, so the tests
put this folder on ``sys.path`` instead. It mimics the small part of the API
dpx-sofa uses (nodes, components and their data, controllers and their
animation events, init/animate/reset/unload, the object factory) with a toy
mechanics: it is not SOFA and simulates nothing faithfully.
"""

from Sofa import Core, Simulation  # noqa: F401  (the real package imports both too)

STANDIN = True
