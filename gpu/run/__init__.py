"""How a run is trained, kept and scored: the run config, the trainer and its schedule, resume,
data-parallel set-up, checkpoints and the run folder, loading, evaluation and generation.

:mod:`.train` drives a run (``cram train``), :mod:`.trainer` is the step loop, :mod:`.resume`
continues one, :mod:`.checkpoint` is the file format, :mod:`.runfolder` the folder; :mod:`.load`
rebuilds a model from a checkpoint, :mod:`.eval` / :mod:`.eval_report` are ``cram eval``,
:mod:`.generate` is ``cram generate``.
"""
