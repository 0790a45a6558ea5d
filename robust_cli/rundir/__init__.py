"""Run directories: their deterministic names (``names``), ``run.json`` (``record``) and the files they hold
(``layout``: ``RunDir``, ``EvalDir``, ``ResultDir``, ``SweepDir``).

Every module that reads or writes a file of a run or sweep directory goes through these types; the file
names appear nowhere else in the package.
"""

from robust_cli.rundir.layout import DetectDir, EvalDir, ExternalEvalDir, ResultDir, RunDir, SweepDir
from robust_cli.rundir.names import GROUP_KEYS, MAX_NAME, RUNTIME_KEYS, external_eval_dir, run_name, train_run_dir
from robust_cli.rundir.record import RunRecord, git_state, versions

__all__ = ["GROUP_KEYS", "MAX_NAME", "RUNTIME_KEYS", "DetectDir", "EvalDir", "ExternalEvalDir", "ResultDir",
           "RunDir", "RunRecord", "SweepDir", "external_eval_dir", "git_state", "run_name", "train_run_dir",
           "versions"]
