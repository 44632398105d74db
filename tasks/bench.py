"""A no-op task: measures medq's queue round trip (`medq bench queue`)."""

from medq.tasks import names
from medq.tasks.app import app


@app.task(name=names.NOOP, ignore_result=False)
def noop(i: int) -> int:
    return i
