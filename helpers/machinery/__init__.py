"""What keeps runs safe and fast, and that a learner may skip: checkpoint files, the rule for running
again (resume), one writer per run (lock), whole-file writes (atomic), one-line reasons for failures
(faults), devices and the execution chosen for them, progress display.

The lesson's modules (config, data, augment, model, train, evaluate, ...) import from here; of the
lesson, this package imports only `config` (type-only imports aside).
"""
