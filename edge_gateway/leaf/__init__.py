"""The leaf aggregator: answers devices (via the proxy's link) and feeds partial sums upward.

`service` is the process (lifecycle, drain, proxy-facing handlers, server sync); `endpoints`
answers /job, /task, /result and /selection; `result_verdicts` decides whether a result counts and
what its device hears; `job_state` keeps each job's books; `payload_cache` and `task_payload` hold
the task answers, built once per model version.
"""

from .service import Leaf

__all__ = ["Leaf"]
