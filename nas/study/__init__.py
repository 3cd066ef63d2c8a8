"""The study: its storage (any Optuna storage URL), the record of what it stores (`TrialRecord`,
`StudyRecord`: every stored key and the rules that read them), and one writer at a time
(`locks`)."""

from nas.study._record import (
    INTERRUPTED,
    TRIAL_ATTRS,
    StudyRecord,
    TrialRecord,
    distilled_records,
    distinct_complete,
    distinct_evaluated,
    find_duplicate,
    front_trials,
    is_feasible,
    outcome,
    task_of,
    trial_counts,
)
from nas.study._storage import (
    fail_trial,
    load_existing_study,
    mark_interrupted,
    open_storage,
    open_study,
    set_trial_attrs,
)

__all__ = [
    "INTERRUPTED",
    "TRIAL_ATTRS",
    "StudyRecord",
    "TrialRecord",
    "distilled_records",
    "distinct_complete",
    "distinct_evaluated",
    "fail_trial",
    "find_duplicate",
    "front_trials",
    "is_feasible",
    "load_existing_study",
    "mark_interrupted",
    "open_storage",
    "open_study",
    "outcome",
    "set_trial_attrs",
    "task_of",
    "trial_counts",
]
