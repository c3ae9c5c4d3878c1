"""A ``transformers.TrainerCallback`` that turns silent training failures into a diagnosis.

Watches the values the trainer logs: a loss of exactly 0 for ``patience`` logs in a row (every
label masked), a NaN or infinite loss or grad norm, and GRPO's ``reward_std`` at 0 for
``patience`` logs (every completion of every group scored alike: no learning signal). In logs
that carry a reward (GRPO and other RL trainers) a loss of exactly 0 is normal and not reported:
on-policy, GRPO's advantages sum to 0 within each group, so completions of equal length give a
loss of exactly 0 whatever the rewards.

Example::

    from vlmcheck.integrations.callbacks import TrainingHealthCallback

    health = TrainingHealthCallback(patience=3)
    trainer = SFTTrainer(..., callbacks=[health])
    trainer.train()
    health.diagnoses   # [Diagnosis(step=4, code='loss-zero', ...)]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from vlmcheck.catalogue import Finding
from vlmcheck.errors import MissingDependencyError, UsageError
from vlmcheck.integrations.catalogue import BY_NAME

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("transformers", "transformers", "vlmcheck.integrations.callbacks") from exc

logger = logging.getLogger("vlmcheck.callbacks")


@dataclass(frozen=True)
class Diagnosis:
    """One thing the callback noticed: where, what, the usual causes, what to check."""

    step: int
    code: str
    message: str
    check: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.message} Check: {self.check}"

    @property
    def finding(self) -> Finding:
        """The diagnosis as a finding with its catalogue code (``loss-zero`` is ``VR001``)."""
        return Finding(BY_NAME[self.code].code, self.message, self.check, data={"step": self.step})


# What to check for each diagnosis: the fix of its runtime catalogue entry (docs/findings.md, VR0xx).
_CHECKS = {name: rule.fix for name, rule in BY_NAME.items() if rule.code.startswith("VR0")}


class TrainingHealthCallback(TrainerCallback):
    """Logs a diagnosis when the trainer's logs show a run that is not learning.

    ``patience``: how many consecutive logs of loss 0 or reward_std 0 make a diagnosis (a single
    0 can be a legitimately easy batch). NaN/inf fire at once. ``stop_on_nan`` asks the trainer
    to stop. Logging happens on the main process only (``state.is_world_process_zero``); every
    process keeps :attr:`diagnoses`.

    Example::

        health = TrainingHealthCallback(patience=3, stop_on_nan=True)
        GRPOTrainer(..., callbacks=[health])
    """

    def __init__(self, *, patience: int = 3, stop_on_nan: bool = False) -> None:
        if patience < 1:
            raise UsageError(f"patience must be at least 1, got {patience}")
        self.patience = patience
        self.stop_on_nan = stop_on_nan
        self.diagnoses: list[Diagnosis] = []
        self._zero_loss = 0
        self._zero_reward_std = 0

    def _report(self, state: TrainerState, code: str, message: str) -> None:
        diagnosis = Diagnosis(step=state.global_step, code=code, message=message, check=_CHECKS[code])
        self.diagnoses.append(diagnosis)
        if state.is_world_process_zero:
            logger.warning("TrainingHealthCallback: %s", diagnosis)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs:
            return
        loss = _number(logs.get("loss"))
        rewarded = "reward" in logs or "reward_std" in logs  # an RL log: a loss of 0 says nothing there
        if loss is not None:
            if not math.isfinite(loss):
                self._report(state, "loss-nan", f"the loss is {loss}.")
                if self.stop_on_nan:
                    control.should_training_stop = True
            elif loss == 0.0 and not rewarded:
                self._zero_loss += 1
                if self._zero_loss == self.patience:
                    self._report(
                        state, "loss-zero", f"the loss has been exactly 0 for {self.patience} logged steps."
                    )
            else:
                self._zero_loss = 0
        grad_norm = _number(logs.get("grad_norm"))
        if grad_norm is not None and not math.isfinite(grad_norm):
            self._report(state, "grad-nan", f"the gradient norm is {grad_norm}.")
            if self.stop_on_nan:
                control.should_training_stop = True
        reward_std = _number(logs.get("reward_std"))
        if reward_std is not None:
            if reward_std == 0.0:
                self._zero_reward_std += 1
                if self._zero_reward_std == self.patience:
                    self._report(
                        state, "reward-std-zero", f"reward_std has been 0 for {self.patience} logged steps."
                    )
            else:
                self._zero_reward_std = 0


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
