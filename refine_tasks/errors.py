"""Errors of the positions and training steps that the CLI reports as one line (no torch import here)."""

from __future__ import annotations


class SequenceTooShort(ValueError):
    """Training sequences cannot hold n_chunks rollouts with their margins."""


class RunDirError(RuntimeError):
    """train.out_dir does not fit the request (resume without a checkpoint, or a fresh run over one)."""


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row (train.max_bad_steps)."""


class TrainCheckpointError(RuntimeError):
    """A checkpoint is missing or corrupt; the message names the file and what to do."""


TRAINING_ERRORS: tuple[type[Exception], ...] = (
    SequenceTooShort,
    RunDirError,
    TrainingDiverged,
    TrainCheckpointError,
)
