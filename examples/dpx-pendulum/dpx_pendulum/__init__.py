"""The entry-point module: kept light, it only says what the plugin offers.

dpx imports this module whenever it lists plugins, so it imports nothing but
dpx; the environment class is imported when a pipeline first uses it.
"""

import dpx


@dpx.hookimpl
def dpx_environments():
    return {
        "pendulum.damped": dpx.Component(
            "dpx_pendulum.env:DampedPendulum", "a damped pendulum: (angle, velocity, length) -> next angle"
        ),
    }
