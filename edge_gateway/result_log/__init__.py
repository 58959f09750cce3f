"""The leaf's durable result log (write-ahead log): records.py is the format, log.py the shell."""

from .log import ResultLog, ResultLogBroken
from .records import Checkpointed, ResultRecord

__all__ = ["Checkpointed", "ResultLog", "ResultLogBroken", "ResultRecord"]
