"""What the experiment scripts share; the scripts themselves (one per paper table or figure) stay in experiments/.

`args` (flags, settings, run configs), `measure` (trained runs in, measurement rows out), `cache` (whether
a measurement record is read, made here, left to another worker or refused),
`outputs` (figure, CSV, Markdown, provenance), `stats` (seed statistics and verdicts),
`paper_numbers` (the paper's reported numbers), and `common`, the one namespace a script imports.
A script runs as `python experiments/<name>.py`, which puts experiments/ on sys.path: hence `from lib import common`.
"""
