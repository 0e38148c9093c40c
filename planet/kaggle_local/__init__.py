"""A local stand-in for Kaggle's API that the real `kaggle` client can talk to.

Serve any folder laid out as `<root>/<competition-slug>/<Kaggle files>` (with the hidden
answers in `<root>/<slug>/_private/solution.csv`) and point the client at `server.url`
(see `planet.kaggle`'s `endpoint` argument). Used by the tests and the offline demo, and by
`planet kaggle-local` to serve a folder until Ctrl-C.
"""

from planet.kaggle_local.faults import Faults
from planet.kaggle_local.grader import GradeResult, grade_file, grade_texts
from planet.kaggle_local.http_handler import RequestRecord
from planet.kaggle_local.server import LocalKaggleServer, serve_forever
from planet.kaggle_local.store import PRIVATE_DIR, SOLUTION_FILE, SUBMISSIONS_FILE

__all__ = [
    "PRIVATE_DIR",
    "SOLUTION_FILE",
    "SUBMISSIONS_FILE",
    "Faults",
    "GradeResult",
    "LocalKaggleServer",
    "RequestRecord",
    "grade_file",
    "grade_texts",
    "serve_forever",
]
