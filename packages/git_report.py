"""What a Git sync did (packages/git_sync.py), kept apart from dulwich so the admin can show it without loading it."""

from dataclasses import asdict, dataclass, field

TOP_LEVEL = "."  # the key of SyncReport.skipped for entries at the repository's root


@dataclass
class SyncReport:
    commit: str = ""
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # directory -> error
    conflicts: dict[str, str] = field(default_factory=dict)  # directory -> why its package was left alone
    skipped: dict[str, list[str]] = field(default_factory=dict)  # directory (or TOP_LEVEL) -> "entry: reason"
    adopted: list[str] = field(default_factory=list)  # packages taken over by this sync (asked for by name)
    notes: list[str] = field(default_factory=list)  # adoptions, moves between projects, a host key pinned
    error: str = ""  # the sync as a whole failed

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed and not self.conflicts

    def as_dict(self) -> dict:
        return asdict(self)


def skipped_lines(skipped: dict[str, list[str]]) -> list[str]:
    """`SyncReport.skipped` (or its JSON) as lines with paths: "orders/shadow.txt: symbolic links are not
    imported", "vendor: submodules are not imported" for an entry at the top level."""
    return [line if where == TOP_LEVEL else f"{where}/{line}" for where, lines in skipped.items() for line in lines]
