"""Resume after Ctrl-C: an interrupted generation or training continues where it stopped.

At its 100th sample the environment raises what Ctrl-C raises; running the same
job again with ``new_session=False`` produces only the missing samples (with
the same seeds, so the dataset equals an uninterrupted one). Training resumes
from its last checkpoint the same way.

    python examples/features/resume.py [--quick]
"""

import dpx
from common import arguments, environment, sizes


def main(out: str = "sessions/features", quick: bool = False) -> tuple[int, int]:
    batch_nb, batch_size = sizes(quick)

    def generate(**env_kwargs):
        return dpx.DataGeneration(environment(env_kwargs=env_kwargs), session_dir=out, session_name="resumed",
                                  new_session=False, batch_nb=batch_nb, batch_size=batch_size,
                                  allow_changes=True).execute()

    try:
        generate(interrupt_at=100)  # interrupt_at changes no sample, hence allow_changes above
    except KeyboardInterrupt:
        pass
    with dpx.open_database(f"{out}/resumed") as database:
        interrupted = database.count()
    print(f"interrupted with {interrupted} samples stored")
    summary = generate()
    print(f"resumed: {summary}")
    return interrupted, summary.total


if __name__ == "__main__":
    main(**arguments())
