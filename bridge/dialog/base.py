"""What the call asks of a dialog, and what a dialog answers.

The call reports caller events (start, recognised text, DTMF, what the caller actually heard of
the last bot turn); the dialog answers with a stream of outputs. Streaming matters: an LLM's reply
is spoken sentence by sentence while it is still being generated, and the call cancels the
stream when the caller barges in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.campaign.amd import AmdResult, AmdSettings


@dataclass(frozen=True, slots=True)
class Say:
    """Speak this text (one chunk of a possibly longer reply)."""

    text: str
    barge_in: bool = True  # False: a prompt the caller cannot interrupt by speaking
    dtmf_barge_in: bool | None = None  # keys pressed over it cut it; None: same as barge_in

    @property
    def keys_interrupt(self) -> bool:
        return self.barge_in if self.dtmf_barge_in is None else self.dtmf_barge_in


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call once everything said before it has been played."""

    reason: str = "dialplan"


@dataclass(frozen=True, slots=True)
class Transfer:
    """Hand the caller to another destination (SIP REFER, or a notice to a WebRTC page)."""

    target: str


@dataclass(frozen=True, slots=True)
class DetectMachine:
    """Tell a person from an answering machine by the caller's audio; the call answers with
    `MachineDetected` (and says nothing meanwhile, unless the dialog does)."""

    settings: AmdSettings


DialogOutput = Say | Hangup | Transfer | DetectMachine


@dataclass(frozen=True, slots=True)
class CallerText:
    text: str


@dataclass(frozen=True, slots=True)
class CallerDigits:
    digits: str


@dataclass(frozen=True, slots=True)
class CallStarted:
    pass


@dataclass(frozen=True, slots=True)
class NoInput:
    """The caller said and keyed nothing for the time the dialog asked to wait."""


@dataclass(frozen=True, slots=True)
class MachineDetected:
    """Who answered; with ``wait_for_beep`` a machine's greeting has ended (``beep``: by a beep)."""

    result: AmdResult
    cause: str
    beep: bool = False


DialogEvent = CallStarted | CallerText | CallerDigits | NoInput | MachineDetected


class Dialog(ABC):
    """One call's conversation state."""

    @abstractmethod
    def respond(self, event: DialogEvent) -> AsyncIterator[DialogOutput]:
        """Outputs for one event. The call may close the iterator early (barge-in)."""

    @abstractmethod
    def bot_turn_heard(self, said: str, heard: str, interrupted: bool) -> None:
        """Tell the dialog what the caller actually heard of its last turn."""

    def no_input_timeout(self) -> float | None:
        """Seconds of caller silence after the bot's turn before a `NoInput` event; None: never."""
        return None

    def hangup_due(self) -> Hangup | None:
        """The hang-up a cut-short turn had not reached yet: a caller who talks over the
        goodbye still ends the call, rather than leaving it open until they speak again."""
        return None
