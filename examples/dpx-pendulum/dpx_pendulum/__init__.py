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


FIELDS = """input: angle (rad), angular velocity (rad/s), length (m) at the start
ground_truth: angle (rad) dt seconds later (dt: see session.json, env_kwargs)
"""


@dpx.hookimpl
def dpx_run_start(run):
    """A lifecycle hook: sessions of pendulum samples say what their numbers mean."""
    environment = run.configs.get("environment") or {}
    if run.pipeline == "DataGeneration" and environment.get("environment_class") == "pendulum.damped":
        (run.session_path / "FIELDS.txt").write_text(FIELDS)
