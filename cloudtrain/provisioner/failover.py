"""Capacity failover for a cloud `up`: try each placement in turn, remove each failed attempt.

A cloud's answer reaches cloudtrain only as text: the Pulumi CLI's output, carried by the
`CommandError` that ClusterStack wraps in a ProvisionError. Each cloud's error codes are data
(`Signals`, declared on its provisioner class) and `classify` is the one place they are matched,
turning that text into NoCapacity (move on) or QuotaExceeded (stop: more zones will not help).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import pulumi.automation as auto

from cloudtrain.catalog import Choice
from cloudtrain.errors import NoCapacity, NotOffered, ProvisionError, QuotaExceeded

# How many placements one `up` tries at most: each failed `pulumi up` costs minutes (network,
# disks, then the VM refused) and a stock-out often spans a whole region, so a handful of
# zones and regions is worth trying; past that the user is better served by the final line.
MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class Signal:
    """One way a cloud says "not here": its code (shown to the user) and a regex over Pulumi's output."""

    code: str
    pattern: str
    reason: str = "no capacity"


@dataclass(frozen=True)
class QuotaSignal:
    """A quota error: `name` is formatted with the pattern's named groups (the quota's own name)."""

    code: str
    pattern: str
    name: str


@dataclass(frozen=True)
class Signals:
    """Everything one cloud says that failover must tell apart; `raise_at` names where quotas
    are raised, formatted with `region`."""

    capacity: tuple[Signal, ...]
    quota: tuple[QuotaSignal, ...]
    raise_at: str


class Stack(Protocol):
    """What the flow asks of a stack (ClusterStack's shape), so tests can inject a double."""

    def up(self, config: dict[str, str]) -> dict[str, Any]: ...

    def destroy(self) -> bool: ...

    def state(self) -> dict[str, Any]: ...


def placement(choice: Choice) -> str:
    """A placement as users write it: the zone where there is one (it names its region), else the region."""
    return choice.zone or choice.region


def cloud_text(err: BaseException) -> str | None:
    """The Pulumi CLI's output behind a ProvisionError: the CommandError in its cause chain."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, auto.CommandError):
            return str(seen)
        seen = seen.__cause__
    return None


def classify(err: ProvisionError, signals: Signals, choice: Choice) -> NoCapacity | QuotaExceeded | None:
    """NoCapacity or QuotaExceeded when the cloud's text behind `err` says so, else None (another
    failure: not failover's business). Quota wins when both appear: more attempts would not help."""
    text = cloud_text(err)
    if text is None:
        return None
    where = placement(choice)
    for q in signals.quota:
        m = re.search(q.pattern, text)
        if m:
            name = q.name.format(**m.groupdict())
            return QuotaExceeded(
                f"{where}: quota exceeded: {name} ({q.code}); more zones would not help",
                f"request an increase at {signals.raise_at.format(region=choice.region)}, then rerun",
            )
    for s in signals.capacity:
        if re.search(s.pattern, text):
            return NoCapacity(f"{s.reason} ({s.code})", placement=where)
    return None


Preflight = Callable[[Choice], tuple[Choice, dict[str, str]]]
Up = Callable[[Choice, dict[str, str]], dict[str, Any]]


def walk(
    choices: list[Choice],
    preflight: Preflight,
    up: Up,
    cleanup: Callable[[], object],
    signals: Signals,
    say: Callable[[str], None],
    pinned: str | None = None,
) -> tuple[Choice, dict[str, Any]]:
    """Pre-flight then `up` at each placement, in order, until one works; return it and its outputs.

    NotOffered (pre-flight) and NoCapacity (the cloud, at create time) move on, the latter after
    `cleanup` removed what the attempt made. QuotaExceeded and every other failure stop at once
    (after the same cleanup for a quota refused at create time). `pinned` names the flag that
    limited the list (for the final hint)."""
    tried: list[str] = []
    done: set[tuple[str, str | None]] = set()
    todo = choices[:MAX_ATTEMPTS]
    for i, choice in enumerate(todo):
        refined = choice
        try:
            refined, extra = preflight(choice)
            key = (refined.region, refined.zone)
            if key in done:  # pre-flight refined this placement onto one already tried
                continue
            done.add(key)
            try:
                outputs = up(refined, extra)
                if tried:
                    say(f"placed in {placement(refined)} after {len(tried)} failed attempt(s)")
                return refined, outputs
            except (ProvisionError, QuotaExceeded) as e:
                found = e if isinstance(e, (NoCapacity, QuotaExceeded)) else classify(e, signals, refined)
                if found is None:
                    raise
                cleanup()  # the failed attempt's network and disks go before anything else
                if found is e:
                    raise
                raise found from e
        except NotOffered as e:
            where, reason = e.placement or placement(refined), f"not offered: {e.message}"
        except NoCapacity as e:
            where, reason = e.placement or placement(refined), e.message
        tried.append(f"{where}: {reason}")
        following = todo[i + 1] if i + 1 < len(todo) else None
        say(f"{where}: {reason}; " + (f"trying {placement(following)}" if following else "no placement left to try"))
    left = len(choices) - len(todo)
    if left > 0:
        hint = f"{left} more placement(s) not tried (at most {MAX_ATTEMPTS} per `up`); pass --region or --zone to choose where to try"
    elif pinned:
        hint = f"try again later, or drop {pinned} to let cloudtrain try other placements"
    else:
        hint = "try again later, or another --gpu (or --spot)"
    size = choices[0].offer.instance_type if choices else "this cluster"
    raise NoCapacity(f"no placement could take {size}; tried {'; '.join(tried) or 'none'}", hint)
