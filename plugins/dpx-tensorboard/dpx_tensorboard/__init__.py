"""dpx-tensorboard: training curves as TensorBoard event files.

This module is what the ``dpx`` entry point of the distribution names, so dpx
imports it every time it lists plugins. It therefore imports nothing but
``dpx``: tensorboard is imported by :mod:`dpx_tensorboard.writer` and
:mod:`dpx_tensorboard.launch`, only when a training or a user asks for them.
"""

import dpx


@dpx.hookimpl
def dpx_stats_writers() -> dict[str, dpx.Component]:
    return {
        "tensorboard": dpx.Component(
            "dpx_tensorboard.writer:TensorBoardWriter", "TensorBoard event files in the session's stats/ folder"
        ),
    }
