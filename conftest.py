"""The whole test suite: installed lifecycle plugins that record runs elsewhere stay out of it.

dpx-mlflow joins every run once installed; the suite's thousands of short runs
would each become an MLflow run. Its own tests turn it back on.
"""

import os

os.environ.setdefault("DPX_DISABLE_PLUGINS", "mlflow")
