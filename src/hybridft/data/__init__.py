"""Reading, cleaning, splitting, label maps and encoding of task data."""

from .prepare import TaskData, load_task_data

__all__ = ["TaskData", "load_task_data"]
