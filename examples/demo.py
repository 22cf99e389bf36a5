"""The demo: step every toy simulator through dpx and show what a sample holds.

Run it with `bash scripts/demo.sh` (which also creates .venv), or directly with
`.venv/bin/python examples/demo.py`.
"""

from dpx.plugins import get_plugins
from dpx.testing import check_environment


def main() -> None:
    toys = [name for name in get_plugins().names("environments") if name.startswith("toy.")]
    if not toys:
        raise SystemExit("the dpx-toy plugin is not installed: run `bash scripts/demo.sh`")
    for name in toys:
        batch = check_environment(name, samples=4, seed=0)
        shapes = ", ".join(f"{field} {array.shape[1:]} {array.dtype}" for field, array in batch.items())
        print(f"{name:12s} 4 reproducible samples: {shapes}")


if __name__ == "__main__":
    main()
