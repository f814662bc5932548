"""One (problem, implementation, k) in a fresh process: ``python -m bench._worker JOB_JSON``.

Started by :func:`bench.measure.run_isolated`; writes the row as JSON to the job's ``out``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import configure_threads


def main(argv: list[str]) -> None:
    job = json.loads(argv[0])
    configure_threads(job["settings"]["threads"])  # before JAX and torch are imported

    from . import impls, measure, problems

    settings = measure.Settings(**job["settings"])
    measure.set_torch_threads(settings.threads)
    problem = problems.build(job["problem"], job["quick"])
    refs = measure.load_refs(Path(job["refs"]))
    impl = impls.by_name()[job["impl"]]
    row = measure.run_one(problem, impl, job["row_name"], job["k"], refs, settings, memory=True)
    Path(job["out"]).write_text(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1:])
