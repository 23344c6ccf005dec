"""A correlation id's executions as a tree: each execution under the one whose event started it.

A chain can cross projects (an event sent from one project's script may start another project's package with a
platform key). Whoever looks at it sees their own executions in full; an execution of another project is either
left out (nothing of theirs hangs below it) or kept as a nameless placeholder (so the tree keeps its shape).
"""

from dataclasses import dataclass, field

from packages import access
from packages.access import Action

from .models import Execution

MAX_NODES = 500  # a page, not a dump: the API's GET /fx/cid/<cid> lists every execution


@dataclass
class ChainNode:
    execution: Execution
    children: list["ChainNode"] = field(default_factory=list)
    visible: bool = True  # False: "an execution in another project", shown without name, id or status


@dataclass(frozen=True)
class Chain:
    roots: list[ChainNode]
    nodes: list[ChainNode]
    truncated: bool


def chain_of(execution: Execution, user=None) -> Chain:
    """The tree of `execution`'s correlation id, in time order. An execution whose parent is not in the chain
    (another correlation id, deleted, or past the first MAX_NODES) is shown as a root.

    With a `user`, only what they may see: executions of other projects with none of the user's below them are
    left out, the others are placeholders (`visible` False). Without one, everything (for code, not for pages)."""
    executions = list(
        Execution.objects.filter(correlation_id=execution.correlation_id)
        .select_related("package", "trigger_event")
        .order_by("created_at")[: MAX_NODES + 1]
    )
    truncated = len(executions) > MAX_NODES
    visible = _visible_ids(executions[:MAX_NODES], user)
    nodes = {e.pk: ChainNode(e, visible=visible is None or e.pk in visible) for e in executions[:MAX_NODES]}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.execution.parent_execution_id)
        (parent.children if parent else roots).append(node)
    roots = _prune(roots)
    kept = {id(node) for node in _walk(roots)}
    return Chain(roots, [node for node in nodes.values() if id(node) in kept], truncated)


def _visible_ids(executions: list[Execution], user) -> set | None:
    """The ids among `executions` that `user` may see; None: all of them."""
    if user is None or access.project_ids(user, Action.VIEW) is None:
        return None
    return {e.pk for e in executions if access.can(user, Action.VIEW, e)}


def _prune(nodes: list[ChainNode]) -> list[ChainNode]:
    """Drop hidden subtrees that hold nothing visible; keep hidden nodes above visible ones as placeholders."""
    kept = []
    for node in nodes:
        node.children = _prune(node.children)
        if node.visible or node.children:
            kept.append(node)
    return kept


def _walk(nodes: list[ChainNode]) -> list[ChainNode]:
    return [n for node in nodes for n in (node, *_walk(node.children))]
