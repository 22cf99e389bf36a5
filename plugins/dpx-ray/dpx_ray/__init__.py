"""dpx-ray: run each environment as a Ray actor, locally or on a Ray cluster.

dpx imports this module whenever it lists plugins, so it imports nothing but
``dpx``: Ray is imported by :mod:`dpx_ray.runner`, only when a pipeline uses
``EnvironmentConfig(runner="ray")``.
"""

import dpx


@dpx.hookimpl
def dpx_runners() -> dict[str, dpx.Component]:
    return {
        "ray": dpx.Component(
            "dpx_ray.runner:RayRunner", "Environments as Ray actors, on this machine or a Ray cluster"
        ),
    }
